"""Real Celery workers SIGKILLed mid-reflect and mid-train (benchmarks/worker_kill.py): nothing lost, nothing
duplicated, only unfinished units asked of the generator again, the training resumed from its checkpoint."""

from __future__ import annotations

import pytest

from benchmarks import worker_kill
from tests.conftest import REDIS_URL

pytestmark = pytest.mark.slow


def test_killed_workers_lose_and_duplicate_nothing(tmp_path, model_dir, pg_url, vllm_server):
    figures = worker_kill.run(tmp_path, pg_url, REDIS_URL, vllm_server, str(model_dir))

    assert figures["jobs_lost"] == 0 and figures["jobs_succeeded"] == len(worker_kill.DOCUMENTS)
    assert figures["reflections"] > 0 and figures["duplicate_reflections"] == 0
    assert figures["reflections_of_worker_1_kept"]
    # worker 1 died between units of its document: some finished, some not
    kill = figures["kill_1"]
    assert 0 < kill["units_finished_of_document"] < kill["chunks_of_document"]
    # worker 1 paid for its finished units and the one it died in; the workers after it asked the generator
    # exactly what the units they finished needed: no finished unit was asked again
    first, *later = figures["workers"]
    assert first["calls_made"] >= first["calls_of_units_finished"] > 0
    for w in later:
        assert w["calls_made"] == w["calls_of_units_finished"], figures
    assert sum(w["units_finished"] for w in later) > 0
    # the killed training went on from its last checkpoint, not from zero, to the same number of steps
    training = figures["training"]
    assert training["resumed_from"] >= 2 and training["steps"] == 6
    assert training["versions_failed"] == 1
    assert max(figures["requeues"].values()) >= 1
