"""Run every benchmark in bench/ and write bench/results/*.json (``nox -s bench``)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import attention_overhead  # noqa: E402
import calibrate_speed  # noqa: E402
import compiled_decode  # noqa: E402
import cost_growth  # noqa: E402
import engine_overhead  # noqa: E402
import profile_speed  # noqa: E402

from vtwctl.files import dumps  # noqa: E402  (strict JSON)

if __name__ == "__main__":
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    for mod in (calibrate_speed, profile_speed, attention_overhead, cost_growth, engine_overhead, compiled_decode):
        res = mod.main()
        (results / f"{res['benchmark']}.json").write_text(dumps(res, indent=2))
        print(dumps({k: v for k, v in res.items() if k != "env"}, indent=2))
