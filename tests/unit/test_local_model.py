"""The in-process model server: each batch generates on a thread that ends with it."""

from __future__ import annotations

import threading

from memo.llm.local import LocalModel
from memo.memory import memory_messages


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
