import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (_ROOT, os.path.join(_ROOT, "scripts")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import pytest
import torch
from make_tiny_checkpoint import build_text_checkpoint, build_vl_checkpoint
from released_configs import released_text_config, released_vl_config, write_config

# The test tensors are tiny: one thread avoids oversubscribing the 2-core CI machine (several times faster there).
torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------------ shared fixtures
# Built once per session into the session's temporary folder. Tests read them; a test that edits a checkpoint
# edits a copy (shutil.copytree) in its own tmp_path.


@pytest.fixture(scope="session")
def tiny_text(tmp_path_factory):
    """The tiny text checkpoint of `make demo` (scripts/make_tiny_checkpoint.py, seed 0): weights, config, tokenizer
    and the remote code, loadable with trust_remote_code."""
    return build_text_checkpoint(tmp_path_factory.mktemp("session") / "tiny-text")


@pytest.fixture(scope="session")
def tiny_vl(tmp_path_factory):
    """The tiny MiniMax-VL-01 checkpoint of `make demo` (seed 0), with its processor."""
    return build_vl_checkpoint(tmp_path_factory.mktemp("session") / "tiny-vl")


@pytest.fixture(scope="session")
def released_config_files(tmp_path_factory):
    """{"text": path, "vl": path} of the released config.json files, written from tests/released_configs.py for the
    scripts that take a config path."""
    root = tmp_path_factory.mktemp("released")
    return {"text": write_config(released_text_config(), root / "minimax-text-01"),
            "vl": write_config(released_vl_config(), root / "minimax-vl-01")}


# Errors a test measured (e.g. the Triton interpreter run's): printed in a section at the end of the run.
MEASURED_ERRORS: list[str] = []


@pytest.fixture
def report_error(request):
    """report_error({"out": 2e-7, "state": 1e-7}) adds "<test id>: out 2.0e-07, state 1.0e-07" to the run's
    "measured errors" section."""

    def report(errors: dict):
        MEASURED_ERRORS.append(f"{request.node.name}: " + ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))

    return report


def pytest_terminal_summary(terminalreporter):
    if MEASURED_ERRORS:
        terminalreporter.section("measured errors (max |error| / max |reference|)")
        for line in MEASURED_ERRORS:
            terminalreporter.write_line(line)
