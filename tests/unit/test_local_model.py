"""The in-process model server (each batch generates on a thread that ends with it) and the repetition guard of
every backend (a loop is cut after its first round; the local backend stops generating it)."""

from __future__ import annotations

import threading

import pytest

from memo.llm.base import loop_start
from memo.llm.local import LocalModel
from memo.memory import memory_messages


def loop_free(text: str) -> bool:
    return loop_start(text) is None


def test_each_batch_generates_on_a_thread_that_ends_with_it(model_dir, monkeypatch):
    """A long-lived thread that has run torch's parallel kernels keeps an OpenMP team, which slows every later
    parallel region of the process (a worker's training after a gate evaluation): none may outlive its batch."""
    model = LocalModel(str(model_dir))
    seen: list[threading.Thread] = []
    real = model._generate

    def spy(batch):
        seen.append(threading.current_thread())
        return real(batch)

    monkeypatch.setattr(model, "_generate", spy)
    for question in ("Where is Zorblax?", "Who founded Zorblax?"):
        answer = model.submit(memory_messages(question), adapter=None, temperature=0.0, max_tokens=4)
        assert answer.result(timeout=120).strip()
    assert len(seen) == 2 and seen[0] is not seen[1]
    for thread in seen:
        assert thread is not model._thread and thread is not threading.main_thread()
        thread.join(timeout=10)
        assert not thread.is_alive()


# -- the repetition guard ------------------------------------------------------------------------------------------
LOOP = (
    "The notes say the cap is $217 but the answer is not $245. The notes say the cap is $189 but the answer is not "
    "$62. The notes say the cap is $217 but the answer is not $245. The notes say the"
)
NORMAL = [
    "Zorblax employees receive 23 days of paid leave per year.",
    "The cap is $217 per night; the $217 includes taxes.",  # a fact may repeat a number
    "5 days in March, 5 days in April, 5 days in May.",
    "Hotel stays are capped at $217 per night. Meals are reimbursed up to 58 euros per day.",
]


def test_the_guard_trims_a_loop_after_its_first_round_and_leaves_normal_text_alone():
    from memo.llm.base import guard_output, loop_start, trim_repetition

    assert trim_repetition(LOOP) == "The notes say the cap is $217 but the answer is not $245."
    assert trim_repetition("Varnmouth. " * 12) == "Varnmouth."
    assert trim_repetition("The answer is " + "4417 " * 20) == "The answer is 4417"
    assert trim_repetition("Zorblax is in Varnmouth " * 5) == "Zorblax is in Varnmouth"
    assert trim_repetition("!" * 40) == "!"
    for text in NORMAL:
        assert trim_repetition(text) == text and loop_start(text) is None
    # a prefix of a loop is cut where the whole is: the stopping criterion and the trim agree
    assert all(loop_start(LOOP[:n]) in (None, loop_start(LOOP)) for n in range(len(LOOP)))
    structured = '{"pairs": [{"q": "a b c d e f", "a": "x"}, {"q": "a b c d e f", "a": "y"}]}'
    assert guard_output(structured, {"type": "object"}) == structured  # JSON is never cut
    assert guard_output(LOOP, None) == trim_repetition(LOOP)


def test_the_stopping_criterion_finishes_a_looping_row_only(model_dir):
    import torch
    from transformers import AutoTokenizer

    from memo.llm.local import RepetitionStop

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    prompt = tok("Question: where?", return_tensors="pt")["input_ids"][0]
    rows = [LOOP, NORMAL[0] + " " + NORMAL[3], LOOP]
    ids = [tok(r, return_tensors="pt")["input_ids"][0] for r in rows]
    width = max(len(i) for i in ids)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batch = torch.stack(
        [torch.cat([prompt, torch.full((width - len(i),), pad), i]) for i in ids]
    )  # (3, prompt + width): left-padded continuations
    stop = RepetitionStop(tok, len(prompt), guarded=[True, True, False])  # the third: structured output
    assert stop(batch[:, : len(prompt) + 4]).tolist() == [False, False, False]  # too early to tell
    assert stop(batch).tolist() == [True, False, False]


async def test_the_openai_backend_trims_plain_text_but_not_json():
    import http.server
    import json
    import threading

    from memo.llm.openai_compat import OpenAIChat

    class Handler(http.server.BaseHTTPRequestHandler):  # a real server on a free port, answering with a loop
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            body = json.dumps({"choices": [{"message": {"content": LOOP}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    chat = OpenAIChat(f"http://127.0.0.1:{server.server_port}/v1", "m")
    try:
        assert (
            await chat.chat([{"role": "user", "content": "q"}])
            == "The notes say the cap is $217 but the answer is not $245."
        )
        assert await chat.chat([{"role": "user", "content": "q"}], json_schema={"type": "object"}) == LOOP
    finally:
        await chat.aclose()
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_local_generation_stops_once_it_loops(model_dir, monkeypatch):
    """A looping row stops generating (not at max_tokens) and comes back trimmed."""
    from memo.llm import local

    steps: list[int] = []
    real_call = local.RepetitionStop.__call__

    def counting(self, input_ids, scores=None, **kwargs):
        steps.append(input_ids.shape[1] - self.prompt_len)
        return real_call(self, input_ids, scores, **kwargs)

    monkeypatch.setattr(local.RepetitionStop, "__call__", counting)
    model = LocalModel(str(model_dir))
    prompt = [{"role": "user", "content": "List the numbers " + "1 " * 50}]
    out = model.submit(prompt, adapter=None, temperature=0.0, max_tokens=96).result(timeout=600)
    assert loop_free(out) and len(out) < 40
    assert max(steps) < 60  # stopped well before the 96-token limit


async def test_the_openai_backend_reports_an_unreachable_server():
    from memo.errors import BackendError
    from memo.llm.openai_compat import OpenAIChat

    chat = OpenAIChat("http://127.0.0.1:1/v1", "m")  # nothing listens on port 1
    try:
        with pytest.raises(BackendError, match="LLM server http://127.0.0.1:1/v1 unreachable: ClientConnectorError"):
            await chat.chat([{"role": "user", "content": "q"}])
    finally:
        await chat.aclose()


def test_a_batch_is_left_padded_without_the_tokenizers_padding_state(model_dir):
    """Batches are padded by hand (the tokenizer's own padding mode is state another thread may reset): the same
    tensors as the tokenizer's left padding."""
    model = LocalModel(str(model_dir))
    prompts = ["Where is Zorblax?", "Who founded Zorblax, and in which year did its first office open?"]
    ours = model._left_padded(prompts)
    theirs = model.tokenizer(prompts, return_tensors="pt", padding=True)
    assert ours["attention_mask"][0, 0] == 0  # the shorter row is padded on the left
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    assert ours["attention_mask"].tolist() == theirs["attention_mask"].tolist()


def test_likelihood_is_the_mean_log_probability_of_each_answer_scored_together_or_alone(model_dir):
    """The Memory's rating of given answers: the mean log-probability per token of each as the reply, equal to the
    model's own loss on it, whatever else is scored in the same (right-padded) pass; a greedy reply is rated at
    least as likely as a made-up one."""
    import torch

    model = LocalModel(str(model_dir))
    messages = memory_messages("What is the capital of France?")
    answers = ["Paris", "The capital of France is Paris, a city on the Seine.", "Zorblax Varnmouth Quillfeather"]
    together = model.likelihood([(messages, a) for a in answers], adapter=None).result(timeout=120)
    model._rated.clear()  # rated again, not remembered: the shared prompt's pass against each row alone
    alone = [model.likelihood([(messages, a)], adapter=None).result(timeout=120)[0] for a in answers]
    assert together == pytest.approx(alone, abs=1e-4)
    tok = model.tokenizer
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    head = tok(prompt, add_special_tokens=False)["input_ids"]
    tail = tok(answers[1], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([head + tail])
    labels = torch.tensor([[-100] * len(head) + tail])
    with torch.inference_mode():
        loss = float(model.base(input_ids=ids, labels=labels).loss)
    assert together[1] == pytest.approx(-loss, abs=1e-4)
    greedy = model.submit(messages, adapter=None, temperature=0.0, max_tokens=8).result(timeout=120)
    rated = model.likelihood([(messages, greedy), (messages, answers[2])], adapter=None).result(timeout=120)
    assert rated[0] > rated[1] and all(r < 0 for r in rated)


def test_token_logprobs_of_answers_to_different_prompts_in_one_pass_equal_each_alone(model_dir):
    """Pairs of (prompt, answer) of different lengths rated in one right-padded pass: each answer's per-token
    log-probabilities are those it gets alone, one per token of the answer."""
    model = LocalModel(str(model_dir))
    pairs = [
        (memory_messages("What is the capital of France?"), "Paris"),
        (memory_messages("Who wrote the play Hamlet, and in which century?"), "William Shakespeare, the 16th century"),
    ]
    with model._gen_lock:
        together = model.token_logprobs(pairs, None)
        model._rated.clear()
        alone = [model.token_logprobs([p], None)[0] for p in pairs]
    for t, a, (_, answer) in zip(together, alone, pairs, strict=True):
        assert len(t) == len(model.tokenizer(answer, add_special_tokens=False)["input_ids"])
        assert t == pytest.approx(a, abs=1e-4)


def test_a_pair_rated_before_on_the_same_adapter_is_remembered_and_forgotten_with_its_adapter(model_dir, tmp_path):
    """A mix of answers sharing a prompt and pairs of their own: rated once, a second rating runs no forward pass
    for what was rated (and the same figures); another adapter rates again; unloading an adapter forgets its ones."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = LocalModel(str(model_dir))
    for name in ("a1", "a2"):  # two real adapters (random LoRA weights: they change the ratings)
        peft_model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(str(model_dir)),
            LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False),
        )
        peft_model.save_pretrained(tmp_path / name)
    asked = memory_messages("Where is Zorblax headquartered?")
    pairs = [(asked, "In Varnmouth."), (asked, "In Quillfeather."), (memory_messages("Who founded it?"), "Mira.")]
    passes: list[int] = []
    forward = model.base.forward
    model.base.forward = lambda *a, **k: passes.append(1) or forward(*a, **k)
    with model._gen_lock:
        first = model.token_logprobs(pairs, ("a1", str(tmp_path / "a1")))
        n = len(passes)
        assert n >= 2  # the shared prompt's two passes, the single pair's row
        assert model.token_logprobs(pairs[::-1], ("a1", str(tmp_path / "a1"))) == first[::-1]
        assert len(passes) == n  # nothing computed again
        other = model.token_logprobs(pairs, ("a2", str(tmp_path / "a2")))
        assert len(passes) > n and other != first
    assert model.unload_adapter("a1")
    assert all(k[0] is None or k[0][0] != "a1" for k in model._rated) and model._rated


async def test_the_scorer_of_a_served_memory_runs_here_on_its_training_weights_or_is_none_without_them(
    tmp_path, model_dir, caplog
):
    """With the Memory on an OpenAI-compatible server, its rating of answers runs in this process (vLLM cannot rate
    text through a LoRA adapter) on the weights it was trained from; a process without them answers without the
    Memory's choice, and says so once."""
    from memo.llm import Engines
    from memo.settings import LLMRole
    from tests.conftest import make_settings

    served = LLMRole(backend="openai", base_url="http://127.0.0.1:9/v1", model="m")
    with_weights = Engines(make_settings(tmp_path, memory=served, memory_train_base=str(model_dir)))
    scorer = with_weights.scorer("v1", str(model_dir))  # a full model directory stands in for a version
    assert scorer is not None and scorer is with_weights.scorer("v1", str(model_dir))  # cached
    [rating] = await scorer.likelihood([(memory_messages("Where is Zorblax?"), "In Varnmouth.")])
    assert rating < 0
    without = Engines(make_settings(tmp_path, memory=served, memory_train_base=str(tmp_path / "nowhere")))
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    assert without.scorer("v1", str(adapter)) is None and without.scorer("v1", str(adapter)) is None
    assert [r.message for r in caplog.records].count(
        f"no Memory weights at {tmp_path / 'nowhere'} in this process: answers without the Memory's choice"
    ) == 1
    assert with_weights.scorer("v1", None) is None  # no trained version yet


def test_the_scorer_of_a_local_memory_is_its_own_client_even_where_memory_is_wrapped(model_dir, tmp_path):
    """A subclass of Engines that wraps its Memory clients (the benchmarks' metering) still gets a scorer that rates."""
    from memo.llm import Engines
    from tests.conftest import make_settings

    class Wrapping(Engines):
        def memory(self, version_id, adapter_path):  # type: ignore[no-untyped-def]
            return object()  # no likelihood

    engines = Wrapping(make_settings(tmp_path, model_dir))
    scorer = engines.scorer("v1", str(model_dir))
    assert scorer is not None and callable(getattr(scorer, "likelihood", None))
