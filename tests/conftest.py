import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (_ROOT, os.path.join(_ROOT, "scripts")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import pytest
import torch

# The test tensors are tiny: one thread avoids oversubscribing the 2-core CI machine (several times faster there).
torch.set_num_threads(1)

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


def pytest_ignore_collect(collection_path, config):
    """tests/test_transformers_common.py fetches transformers' test files when it is imported: it is not even
    collected when slow tests are deselected (`make test`)."""
    if collection_path.name == "test_transformers_common.py" and "not slow" in (config.getoption("markexpr") or ""):
        return True
    return None
