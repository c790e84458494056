import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (_ROOT, os.path.join(_ROOT, "scripts")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import pytest
import torch
from make_tiny_checkpoint import build_m1_checkpoint, build_text_checkpoint, build_vl_checkpoint, tiny_vl_config
from minimax_code import load
from released_configs import released_text_config, released_vl_config, write_config
from tiny_tokenizer import build_tiny_tokenizer, special_token_ids

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
def tiny_m1(tmp_path_factory):
    """The tiny text model under MiniMax-M1's identifiers, tokenizer, chat format and sampling (seed 0)."""
    return build_m1_checkpoint(tmp_path_factory.mktemp("session") / "tiny-m1")


@pytest.fixture(scope="module")
def text_model(tiny_text):
    """`tiny_text` loaded as MiniMaxText01ForCausalLM in float32, eval mode."""
    model_class = load("modeling_minimax_text_01").MiniMaxText01ForCausalLM
    return model_class.from_pretrained(tiny_text, dtype=torch.float32).eval()


@pytest.fixture(scope="session")
def released_config_files(tmp_path_factory):
    """{"text": path, "vl": path} of the released config.json files, written from tests/released_configs.py for the
    scripts that take a config path."""
    root = tmp_path_factory.mktemp("released")
    return {"text": write_config(released_text_config(), root / "minimax-text-01"),
            "vl": write_config(released_vl_config(), root / "minimax-vl-01")}


@pytest.fixture(scope="module")
def vl_processor():
    """The VL processor over the tiny tokenizer (with its <image> token) and the released image geometry."""
    image_processing = load("image_processing_minimax_vl_01")
    processing = load("processing_minimax_vl_01")
    tokenizer = build_tiny_tokenizer(with_image_token=True)
    return processing.MiniMaxVL01Processor(image_processing.MiniMaxVL01ImageProcessor(), tokenizer)


@pytest.fixture(scope="module")
def vl_model(vl_processor):
    """A tiny eval-mode MiniMaxVL01ForConditionalGeneration matching `vl_processor`'s vocabulary. Module-scoped:
    tests that change its config restore it."""
    tokenizer = vl_processor.tokenizer
    config = tiny_vl_config(image_token_index=special_token_ids(tokenizer)["image"], vocab_size=len(tokenizer))
    torch.manual_seed(0)
    model = load("modeling_minimax_vl_01").MiniMaxVL01ForConditionalGeneration(config).eval()
    with torch.no_grad():  # biases start at 0 and norms at 1: perturb everything outside the LM so all of it counts
        for name, param in model.named_parameters():
            if not name.startswith("language_model."):
                param.add_(0.05 * torch.randn_like(param))
    return model


@pytest.fixture(scope="session")
def released_configs(released_config_files):
    """{"text": MiniMaxText01Config, "vl": MiniMaxVL01Config} of the released values, loaded as the scripts load a
    config.json. Shared by the session: read them, do not change them."""
    import quanto_config

    return {name: quanto_config.load_config(path) for name, path in released_config_files.items()}


@pytest.fixture(scope="session")
def released_meta_models(released_configs):
    """{"text": ..., "vl": ...}: the released models on the meta device (shapes, no storage), built once because
    each takes seconds (8,000 modules). Shared by the session: read them, do not change them."""
    import device_map

    return {name: device_map.build_meta_model(config) for name, config in released_configs.items()}


RELEASED_FIXTURES = {"released_config_files", "released_configs", "released_meta_models"}


def pytest_collection_modifyitems(items):
    """Mark `released` every test of the released configuration: the ones using its fixtures or naming it (the fresh
    clone check in test_self_contained.py runs them)."""
    for item in items:
        if RELEASED_FIXTURES & set(getattr(item, "fixturenames", ())) or "released" in item.name:
            item.add_marker(pytest.mark.released)


# Errors a test measured (e.g. the Triton interpreter run's): printed in a section at the end of the run.
MEASURED_ERRORS: list[str] = []


@pytest.fixture(autouse=True)
def seeded_torch():
    """Every test starts from the same global torch seed, so its random draws do not depend on which tests ran
    before it (a -k selection, a new test, another order): a tolerance checked once holds on every run."""
    torch.manual_seed(0)


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
    """tests/test_transformers_common.py fetches transformers' test files when it is imported: it is collected only
    where slow tests are selected (not by `make test` nor `make test-oldest`)."""
    if collection_path.name != "test_transformers_common.py":
        return None
    markexpr = config.getoption("markexpr") or ""
    selects_slow = not markexpr or ("slow" in markexpr and "not slow" not in markexpr)
    return None if selects_slow else True
