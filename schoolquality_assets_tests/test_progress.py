"""Long steps log progress: a compile longer than the heartbeat interval logs heartbeats."""

import asyncio
import time
from pathlib import Path

import httpstan.models

from schoolquality_assets.engine import base, heartbeat, pystan_engine
from schoolquality_assets.progress import StepProgress


def test_slow_compile_logs_heartbeats(tmp_path, monkeypatch):
    program = tmp_path / "slow.stan"
    program.write_text("parameters { real x; } model { x ~ std_normal(); }")

    def not_cached(name):
        raise KeyError(name)

    async def slow_build(code):          # stands in for g++: 1.3 s
        await asyncio.sleep(1.3)

    monkeypatch.setattr(httpstan.models, "import_services_extension_module", not_cached)
    monkeypatch.setattr(httpstan.models, "build_services_extension_module", slow_build)
    monkeypatch.setattr(pystan_engine, "COMPILE_HEARTBEAT_SECONDS", 0.25)
    lines: list[str] = []
    pystan_engine.compile_pystan(Path(program), progress=lines.append)
    beats = [line for line in lines if "still compiling" in line]
    assert len(beats) >= 3, lines
    assert lines[0].startswith("slow.stan: compiling") and lines[-1].startswith("slow.stan: compiled in")


def test_sampling_heartbeat_reports_phase_rate_and_what_remains(monkeypatch):
    lines: list[str] = []
    rule = base.StopRule(judge=lambda views, n, elapsed: None, budget_seconds=600)
    beat = heartbeat.Heartbeat(lines.append, warmup=300, stop=rule, interval=0.0)
    beat.start -= 10.0                                    # ten seconds into sampling
    beat.message(("iteration", 1, 150))
    beat.message(("iteration", 2, 120))
    beat.message("chain 2: a warning")                    # other messages pass through
    beat.tick(kept=0, checkpoint=100)
    assert lines[0] == "chain 2: a warning"
    assert "chain 1 warmup 150" in lines[1] and "chain 2 warmup 120" in lines[1]
    assert "12.00 iterations/s per chain" in lines[1].replace("11.99", "12.00")
    assert "warmup ends in ~15 s" in lines[1] and "budget 600 s" in lines[1]
    beat.message(("iteration", 1, 400))
    beat.message(("iteration", 2, 380))
    beat.tick(kept=80, checkpoint=100)
    assert "80 draws kept per chain; next convergence check at 100" in lines[2]


def test_long_steps_beat_with_elapsed_parts_and_what_remains():
    lines: list[str] = []
    with StepProgress(lines.append, "LOO", parts=4, interval=0.1) as progress:
        time.sleep(0.25)                                   # no part done yet: heartbeats without an estimate
        progress.part_done("M1 per observation")
        time.sleep(0.25)
    beats = [line for line in lines if "elapsed" in line and "done;" not in line]
    assert lines[0] == "LOO: started (4 parts)" and lines[-1].startswith("LOO: finished in")
    assert any("0 of 4 parts done, no estimate" in line for line in beats), lines
    assert any("1 of 4 parts done, ~" in line and "s left" in line for line in beats), lines
    assert any(line.startswith("LOO: M1 per observation done; ") for line in lines)
