"""The suite runs on its own user paths (tests/conftest.py): a user's calibration store, Hugging Face cache
or HOME changes nothing a test sees, and no test writes into them."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

from conftest import USER_PATHS
from console import script


def test_user_paths_are_the_suites_own():
    real_home = Path(pwd.getpwuid(os.getuid()).pw_dir).resolve()
    from vtwctl import records

    for path in (Path.home(), records.user_dir(), Path(os.environ["HF_HOME"]), Path(os.environ["XDG_CACHE_HOME"])):
        assert USER_PATHS.resolve() in path.resolve().parents, path
        assert path.resolve() != real_home
    assert not any(os.environ.get(v) for v in ("VTWCTL_CALIBRATION_DIR", "VTWCTL_PROFILE_DIR", "VTWCTL_DATA_DIR"))


def test_a_started_vtwctl_sees_the_suites_store():
    res = script("models", "--json")
    assert res.returncode == 0, res.stderr
    listed = json.loads(res.stdout)
    # the user's own `vtwctl calibrate` records (the demo's, say) are not seen
    assert all(not p["user_calibrations"] for p in listed), [p["name"] for p in listed if p["user_calibrations"]]
