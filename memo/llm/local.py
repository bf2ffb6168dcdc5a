"""In-process transformers backend (+ peft adapters for the memory role), with micro-batching.

Requests from concurrent coroutines are queued; one generation thread per loaded model takes everything
waiting that shares an adapter and sampling temperature and decodes it as one left-padded batch. A plain-text row
stops as soon as its output loops (:class:`RepetitionStop`) and is returned trimmed of the loop (the repetition
guard of :mod:`memo.llm.base`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from memo.llm.base import Message, loop_start, trim_repetition
from memo.llm.prepare import require_model

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

RATED_CACHE = 100_000  # remembered ratings per model: a few MB


@dataclass
class _Request:
    prompt: str
    adapter: tuple[str, str] | None  # (name, path)
    temperature: float
    max_tokens: int
    guard: bool = True  # plain text: stop and trim a loop (False for structured output)
    future: Future[str] = field(default_factory=Future)

    @property
    def group(self) -> tuple[str | None, float]:
        return (self.adapter[0] if self.adapter else None, self.temperature)


class LocalModel:
    """One base model in memory, any number of LoRA adapters on it, one generation thread."""

    def __init__(self, path: str, *, device: str = "cpu", max_batch: int = 16) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.path = str(require_model(path))
        self.device = device
        self.max_batch = max_batch
        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        # float32 on CPU: the precision adapters are trained in, and CPUs without native bfloat16 (AVX2) run
        # bfloat16 slower anyway; half precision on accelerators
        dtype = torch.float32 if device == "cpu" else torch.float16
        base: Any = AutoModelForCausalLM.from_pretrained(self.path, dtype=dtype)
        self.base = base.to(device).eval()
        self.model: Any = self.base  # becomes a PeftModel once an adapter is loaded
        self._adapters: dict[str, str] = {}
        self._queue: list[_Request] = []
        self._cv = threading.Condition()
        self._gen_lock = threading.Lock()
        # (adapter, prompt, answer) -> the answer's token log-probabilities (see token_logprobs), oldest first
        self._rated: dict[tuple[tuple[str, str] | None, str, str], list[float]] = {}
        self._thread = threading.Thread(target=self._loop, name=f"generate:{self.path}", daemon=True)
        self._thread.start()

    # -- public -------------------------------------------------------------------------------------------------
    def submit(
        self,
        messages: list[Message],
        *,
        adapter: tuple[str, str] | None,
        temperature: float,
        max_tokens: int,
        guard: bool = True,
    ) -> Future[str]:
        """Queue a chat request. ``guard``: plain text, generation of which stops once it loops and which is
        returned without the loop (leave it off for structured output)."""
        prompt = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        req = _Request(str(prompt), adapter, temperature, max_tokens, guard)
        with self._cv:
            self._queue.append(req)
            self._cv.notify()
        return req.future

    def likelihood(
        self, pairs: list[tuple[list[Message], str]], *, adapter: tuple[str, str] | None
    ) -> Future[list[float]]:
        """The mean log-probability per token of each answer as the reply to its messages, for ``pairs`` of
        (messages, answer): one forward pass of them all, on a thread of its own between generation batches (see
        :meth:`_run_batch`)."""
        fut: Future[list[float]] = Future()

        def run() -> None:
            try:
                with self._gen_lock:
                    # its caller gave up while it waited (a query past its deadline, a failed sibling call): no forward
                    # pass, and no result set on a cancelled future (InvalidStateError, which killed this thread)
                    if not fut.set_running_or_notify_cancel():
                        return
                    rated = self.token_logprobs(pairs, adapter)
                    fut.set_result([sum(t) / len(t) for t in rated])
            except Exception as exc:  # reported to the caller, the model lives on
                fut.set_exception(exc)

        threading.Thread(target=run, name=f"score:{self.path}").start()
        return fut

    def token_logprobs(
        self, pairs: list[tuple[list[Message], str]], adapter: tuple[str, str] | None
    ) -> list[list[float]]:
        """The log-probability of every token of each answer as the reply to its messages, for ``pairs`` of
        (messages, answer) (the caller holds the generation lock). A pair rated before on the same adapter is
        remembered (a reflection as the reply to its own question is rated for every question it is offered to);
        answers to the same messages share one pass of the prompt (:meth:`_rate_shared_prompt`), the other pairs go
        in one right-padded pass (:meth:`_rate_rows`)."""
        if not pairs:
            return []
        ctx = self._adapter_context(adapter)
        keys = []
        for messages, answer in pairs:
            prompt = str(self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            keys.append((adapter, prompt, answer))
        by_prompt: dict[str, list[str]] = {}
        for key in dict.fromkeys(k for k in keys if k not in self._rated):
            by_prompt.setdefault(key[1], []).append(key[2])
        shared = {p: a for p, a in by_prompt.items() if len(a) > 1}
        single = [(p, a[0]) for p, a in by_prompt.items() if len(a) == 1]
        with ctx:
            for prompt, answers in shared.items():
                for answer, rated in zip(answers, self._rate_shared_prompt(prompt, answers), strict=True):
                    self._remember((adapter, prompt, answer), rated)
            for (prompt, answer), rated in zip(single, self._rate_rows(single), strict=True):
                self._remember((adapter, prompt, answer), rated)
        return [self._rated[k] for k in keys]

    def _remember(self, key: tuple[tuple[str, str] | None, str, str], rated: list[float]) -> None:
        self._rated[key] = rated
        if len(self._rated) > RATED_CACHE:
            del self._rated[next(iter(self._rated))]  # the oldest

    def _prompt_ids(self, prompt: str) -> list[int]:
        return list(self.tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def _answer_ids(self, answer: str) -> list[int]:
        return list(self.tokenizer(answer, add_special_tokens=False)["input_ids"]) or [self.tokenizer.eos_token_id]

    def _rate_rows(self, pairs: list[tuple[str, str]]) -> list[list[float]]:
        """Each (prompt, answer) as its own row of one right-padded pass."""
        import torch

        if not pairs:
            return []
        rows = [(self._prompt_ids(prompt), self._answer_ids(answer)) for prompt, answer in pairs]
        width = max(len(h) + len(t) for h, t in rows)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.tensor([h + t + [pad] * (width - len(h) - len(t)) for h, t in rows], device=self.device)
        mask = torch.tensor([[1] * (len(h) + len(t)) + [0] * (width - len(h) - len(t)) for h, t in rows])
        first = min(len(h) for h, _ in rows) - 1  # logits before the first answer token are not needed
        with torch.inference_mode():
            out = self.model(input_ids=ids, attention_mask=mask.to(self.device), logits_to_keep=width - first)
        logits = out.logits[:, :-1].float()  # positions first .. width - 2, predicting first + 1 .. width - 1
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, first + 1 :, None])[..., 0]
        return [
            row[len(h) - 1 - first : len(h) - 1 - first + len(t)].tolist()
            for row, (h, t) in zip(logp, rows, strict=True)
        ]

    def _rate_shared_prompt(self, prompt: str, answers: list[str]) -> list[list[float]]:
        """Answers to one prompt: the prompt's pass once, its key-value cache repeated for a right-padded pass of
        the answers alone (a question's offered reflections: most of each row is the shared prompt)."""
        import torch

        head = self._prompt_ids(prompt)
        tails = [self._answer_ids(a) for a in answers]
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([head], device=self.device), use_cache=True, logits_to_keep=1)
            first = torch.log_softmax(out.logits[0, -1].float(), dim=-1)  # the first answer token's distribution
            cache = out.cache
            cache.batch_repeat_interleave(len(tails))
            width = max(len(t) for t in tails)
            pad = int(self.tokenizer.pad_token_id)
            ids = torch.tensor([t + [pad] * (width - len(t)) for t in tails], device=self.device)
            mask = torch.tensor([[1] * (len(head) + len(t)) + [0] * (width - len(t)) for t in tails])
            rest = self.model(input_ids=ids, attention_mask=mask.to(self.device), cache=cache).logits
            logp = torch.log_softmax(rest[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None])[..., 0]
        return [[float(first[t[0]]), *row[: len(t) - 1].tolist()] for row, t in zip(logp, tails, strict=True)]

    # -- generation thread --------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._queue:
                    self._cv.wait()
                group = self._queue[0].group
                batch = [r for r in self._queue if r.group == group][: self.max_batch]
                for r in batch:
                    self._queue.remove(r)
            # a request whose caller went away (a cancelled query) is not generated
            batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
            if not batch:
                continue
            with self._gen_lock:
                self._run_batch(batch)

    def _run_batch(self, batch: list[_Request]) -> None:
        """Generate one batch on a thread that ends with it. A thread that has run torch's parallel CPU kernels keeps
        an OpenMP team for as long as it lives; with more OpenMP threads than cores, libgomp spin-waits less and
        every other parallel region of the process (training included) gets slower."""

        def run() -> None:
            try:
                outputs = self._generate(batch)
            except Exception as exc:  # reported to every waiting caller, the model lives on
                log.exception("local generation failed")
                for r in batch:
                    r.future.set_exception(exc)
                return
            for r, out in zip(batch, outputs, strict=True):
                r.future.set_result(out)

        worker = threading.Thread(target=run, name=f"generate-batch:{self.path}")
        worker.start()
        worker.join()

    def _use_adapter(self, adapter: tuple[str, str] | None) -> None:
        if adapter is None:
            return
        name, path = adapter
        if name not in self._adapters:
            from peft import PeftModel

            if self.model is self.base:
                self.model = PeftModel.from_pretrained(self.base, path, adapter_name=name).eval()
            else:
                self.model.load_adapter(path, adapter_name=name)
            self._adapters[name] = path
            log.info("loaded adapter %s from %s", name, path)
        self.model.set_adapter(name)

    def _adapter_context(self, adapter: tuple[str, str] | None) -> contextlib.AbstractContextManager[Any]:
        """``adapter`` set for the next forward pass; the base model alone (the adapters disabled) for None."""
        self._use_adapter(adapter)
        if adapter is None and self.model is not self.base:
            return cast(contextlib.AbstractContextManager[Any], self.model.disable_adapter())
        return contextlib.nullcontext()

    def unload_adapter(self, name: str) -> bool:
        """Free an adapter's weights (a later request for it loads it again). True if it was unloaded; the last
        adapter stays (peft keeps one, and it is small)."""
        with self._gen_lock:  # never while a batch is decoding; every batch sets its own adapter first
            if name not in self._adapters or len(self._adapters) == 1:
                return False
            self.model.delete_adapter(name)
            del self._adapters[name]
            self._rated = {k: v for k, v in self._rated.items() if k[0] is None or k[0][0] != name}
            return True

    def _generate(self, batch: list[_Request]) -> list[str]:
        import torch

        adapter = batch[0].adapter
        ctx = self._adapter_context(adapter)
        enc = self._left_padded([r.prompt for r in batch])
        temperature = batch[0].temperature
        kwargs: dict[str, Any] = {"max_new_tokens": max(r.max_tokens for r in batch)}
        if temperature > 0:
            kwargs.update(do_sample=True, temperature=temperature, top_p=0.95)
        else:
            kwargs.update(do_sample=False)
        if any(r.guard for r in batch):
            from transformers import StoppingCriteriaList

            stop = RepetitionStop(self.tokenizer, enc["input_ids"].shape[1], [r.guard for r in batch])
            kwargs["stopping_criteria"] = StoppingCriteriaList([stop])
        with torch.inference_mode(), ctx:
            out: torch.Tensor = self.model.generate(
                **enc,
                pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=self.tokenizer.eos_token_id,
                **kwargs,
            )  # (batch, prompt + new)
        new = out[:, enc["input_ids"].shape[1] :]  # (batch, new)
        texts = []
        for r, row in zip(batch, new, strict=True):
            text = str(self.tokenizer.decode(row[: r.max_tokens], skip_special_tokens=True)).strip()
            texts.append(trim_repetition(text) if r.guard else text)
        return texts

    def _left_padded(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        """``input_ids`` and ``attention_mask`` (batch, longest), left-padded here rather than by the tokenizer: a fast
        tokenizer keeps its padding mode as state, which a caller on another thread (a token counter) can reset."""
        import torch

        rows = [list(ids) for ids in self.tokenizer(prompts, padding=False)["input_ids"]]
        width = max(len(r) for r in rows)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        return {"input_ids": ids.to(self.device), "attention_mask": mask.to(self.device)}


class RepetitionStop:
    """A transformers stopping criterion: a guarded row is finished once its new text loops
    (:func:`memo.llm.base.loop_start`), instead of repeating the loop until ``max_new_tokens``. The row's text is
    trimmed afterwards; the others in the batch go on."""

    CHECK_FROM = 8  # new tokens before the first check (a loop needs at least two rounds of several words)

    def __init__(self, tokenizer: Any, prompt_len: int, guarded: list[bool]) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.guarded = guarded
        self.stopped = [False] * len(guarded)

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        import torch

        new = input_ids[:, self.prompt_len :]  # (batch, new so far)
        if new.shape[1] >= self.CHECK_FROM:
            for i, guarded in enumerate(self.guarded):
                if guarded and not self.stopped[i]:
                    text = self.tokenizer.decode(new[i], skip_special_tokens=True)
                    text = text[: len(text) - len(text.split()[-1])] if text and not text[-1].isspace() else text
                    self.stopped[i] = loop_start(text) is not None  # on whole words: the last may go on
        return torch.tensor(self.stopped, dtype=torch.bool, device=input_ids.device)  # (batch,)


_POOL: dict[tuple[str, str], LocalModel] = {}
_POOL_LOCK = threading.Lock()


def load_local_model(path: str, device: str = "cpu") -> LocalModel:
    """The process-wide instance of a local model (loaded once, shared by every role that names it)."""
    key = (str(require_model(path)), device)
    with _POOL_LOCK:
        if key not in _POOL:
            _POOL[key] = LocalModel(key[0], device=device)
        return _POOL[key]


def loaded_models() -> list[LocalModel]:
    with _POOL_LOCK:
        return list(_POOL.values())


class LocalChat:
    """An LLM (see memo.llm.base) on a local model, optionally through a LoRA adapter."""

    def __init__(self, model: LocalModel, *, adapter: tuple[str, str] | None = None, label: str | None = None):
        self.model = model
        self.adapter = adapter
        self._label = label or (f"local:{adapter[0]}" if adapter else f"local:{model.path}")

    @property
    def name(self) -> str:
        return self._label

    async def chat(
        self,
        messages: list[Message],
        *,
        temperature: float = 0.0,
        max_tokens: int = 256,
        json_schema: dict[str, Any] | None = None,
    ) -> str:
        # json_schema: no constrained decoding here; callers parse tolerantly and retry (memo.llm.base.chat_json).
        # Plain text comes back trimmed of loops (memo.llm.base.trim_repetition), structured output as it is
        fut = self.model.submit(
            messages,
            adapter=self.adapter,
            temperature=temperature,
            max_tokens=max_tokens,
            guard=json_schema is None,
        )
        return await asyncio.wrap_future(fut)

    async def likelihood(self, pairs: list[tuple[list[Message], str]]) -> list[float]:
        return await asyncio.wrap_future(self.model.likelihood(pairs, adapter=self.adapter))
