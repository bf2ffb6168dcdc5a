"""The harness's token meter on a local model counts on the event loop while the model's generation thread tokenizes
a batch: it must count with a tokenizer instance of its own (a fast tokenizer's padding mode is shared state)."""

from __future__ import annotations

from benchmarks.metering import CURRENT, Meter, metered
from memo.llm.local import LocalChat, LocalModel


async def test_a_metered_local_model_is_counted_with_its_own_tokenizer_instance(model_dir):
    model = LocalModel(str(model_dir))
    llm = metered(LocalChat(model), counter=None)  # type: ignore[arg-type]  # a local model never needs the fallback
    counter = llm.count.__self__  # type: ignore[attr-defined]  # the TokenCounter's bound method
    assert counter.tokenizer is not model.tokenizer
    assert counter.text("Where is Zorblax?") == len(model.tokenizer.encode("Where is Zorblax?"))
    meter = Meter()
    CURRENT.set(meter)
    assert (await llm.chat([{"role": "user", "content": "Where is Zorblax?"}], max_tokens=4)).strip()
    assert meter.as_dict()["calls"] == 1 and meter.as_dict()["prompt_tokens"] > 5
