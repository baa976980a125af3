"""An engine handed to another process (a pool's argument) is refused saying what to do."""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import multiprocessing
import pickle
from pathlib import Path

import pytest

from jackpot import AsyncJackpotEngine, JackpotEngine

ADVICE = (r"cannot pickle an engine \({}\): its actors and connections run in this process; "
          r"open an engine in each worker process, after it starts, and send it op_ids and "
          r"amounts")


def _bet(engine: JackpotEngine) -> str:  # pragma: no cover - never runs: never sent
    return engine.contribute("1").op_id


def test_an_engine_sent_to_a_worker_process_is_refused_saying_what_to_do(
        engine: JackpotEngine) -> None:
    # pickle said only "cannot pickle '_thread.lock' object".
    with pytest.raises(TypeError, match=ADVICE.format("JackpotEngine")):
        pickle.dumps(engine)
    with pytest.raises(TypeError, match=ADVICE.format("JackpotEngine")):
        copy.copy(engine)
    context = multiprocessing.get_context("spawn")
    with (concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as pool,
          pytest.raises(TypeError, match=ADVICE.format("JackpotEngine"))):
        pool.submit(_bet, engine).result(timeout=60)
    assert engine.contribute("1", groups="minor").versions == {"minor": 2}  # still serving


def test_an_asyncio_engine_is_refused_alike(db_path: Path) -> None:
    async def run() -> None:
        async with await AsyncJackpotEngine.open(db_path) as engine:
            with pytest.raises(TypeError, match=ADVICE.format("AsyncJackpotEngine")):
                pickle.dumps(engine)

    asyncio.run(run())
