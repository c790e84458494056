"""transformers' own common model tests (ModelTesterMixin of its tests/test_modeling_common.py, and
GenerationTesterMixin of tests/generation/test_utils.py where available) run against MiniMax-Text-01 on a tiny
config with stock right-padded masks.

transformers' test files are not in its wheel: they are taken at test time from the sdist of the installed version
(`pip download --no-deps --no-binary :all: transformers==VERSION`) and unpacked into a cache outside the repository
(~/.cache/minimax-01/transformers-tests-VERSION). Point TRANSFORMERS_TESTS_DIR at the tests/ folder of a transformers
checkout of the same version to use that instead. The sdist ships tests/test_modeling_common.py but not
tests/generation/ nor tests/exporters/, which it imports: without them the generation and export mixins are
empty placeholders (written into the cache, never into the repository) and their tests do not run.

The tests this architecture cannot pass are overridden below, each with its reason. The module is slow (about
30 s once fetched, on 2 cores):

    python -m pytest -m slow tests/test_transformers_common.py
"""

import importlib
import os
import subprocess
import sys
import tarfile
import tempfile
import unittest
import unittest.mock
import warnings
from pathlib import Path

import pytest
import torch
import transformers

pytestmark = pytest.mark.slow

VERSION = transformers.__version__
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "minimax-01" / f"transformers-tests-{VERSION}"
PACKAGE = "transformers_common_tests"  # the name the copied tests/ folder is imported under
SUBFOLDERS = ("generation", "exporters")  # imported by test_modeling_common.py; not in the sdist
# stand-ins for the subfolders the sdist lacks: mixins without tests, so that test_modeling_common.py imports
PLACEHOLDERS = {
    "generation/test_utils.py": "class GenerationTesterMixin:\n    PLACEHOLDER = True\n",
    "exporters/test_export.py": "class ExportTesterMixin:\n    PLACEHOLDER = True\n",
}


def fetch_tests() -> Path | None:
    """The folder holding transformers' tests/ files as package PACKAGE (copied once from TRANSFORMERS_TESTS_DIR, or
    else from the sdist); None if they cannot be had."""
    checkout = os.environ.get("TRANSFORMERS_TESTS_DIR")
    cache = CACHE / ("checkout" if checkout else "sdist")
    if not (cache / PACKAGE / "test_modeling_common.py").exists():
        with tempfile.TemporaryDirectory() as tmp:
            source = Path(checkout) if checkout else sdist_tests(Path(tmp))
            if source is None or not (source / "test_modeling_common.py").exists():
                return None
            copy_tests(source, cache / PACKAGE)
    return cache


def sdist_tests(tmp: Path) -> Path | None:
    """Download the sdist of the installed transformers into `tmp` and unpack its tests/*.py there."""
    download = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
         f"transformers=={VERSION}", "-d", str(tmp)], capture_output=True, text=True, timeout=600)
    sdists = list(tmp.glob("transformers-*.tar.gz"))
    if download.returncode or not sdists:
        return None
    with tarfile.open(sdists[0]) as sdist:
        members = [m for m in sdist.getmembers() if m.isfile() and m.name.endswith(".py")
                   and m.name.split("/")[1:2] == ["tests"]]
        sdist.extractall(tmp, members=members, filter="data")
    return tmp / f"transformers-{VERSION}" / "tests"


def copy_tests(source: Path, package: Path) -> None:
    """tests/*.py and the SUBFOLDERS' *.py of `source` into `package`, placeholders where a subfolder is absent."""
    for folder in ("", *SUBFOLDERS):
        (package / folder).mkdir(parents=True, exist_ok=True)
        (package / folder / "__init__.py").touch()
        for file in (source / folder).glob("*.py") if (source / folder).is_dir() else ():
            (package / folder / file.name).write_bytes(file.read_bytes())
    for name, text in PLACEHOLDERS.items():
        if not (package / name).exists():
            (package / name).write_text(text)


def import_mixins():
    folder = fetch_tests()
    if folder is None:
        pytest.skip(f"transformers {VERSION}'s tests could not be fetched (offline?): pip download of its sdist "
                    "failed; set TRANSFORMERS_TESTS_DIR to a checkout's tests/ folder", allow_module_level=True)
    sys.path.insert(0, str(folder))
    with warnings.catch_warnings():  # transformers' own markers (flash_attn_test, ...) are not registered here
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        common = importlib.import_module(f"{PACKAGE}.test_modeling_common")
        generation = importlib.import_module(f"{PACKAGE}.generation.test_utils")
    return common, generation


common, generation = import_mixins()
HAS_GENERATION_TESTS = not getattr(generation.GenerationTesterMixin, "PLACEHOLDER", False)

from minimax_code import load  # noqa: E402

MiniMaxText01Config = load("configuration_minimax_text_01").MiniMaxText01Config
MiniMaxText01Model = load("modeling_minimax_text_01").MiniMaxText01Model
MiniMaxText01ForCausalLM = load("modeling_minimax_text_01").MiniMaxText01ForCausalLM


class MiniMaxText01ModelTester:
    """Builds the tiny config and inputs the mixins ask for: 2 layers (lightning, then softmax attention) and
    right-padded attention masks as transformers' testers make them."""

    def __init__(self, parent, batch_size=2, seq_length=7, vocab_size=99, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, is_training=True):
        self.parent = parent
        self.batch_size, self.seq_length, self.vocab_size = batch_size, seq_length, vocab_size
        self.hidden_size, self.num_hidden_layers = hidden_size, num_hidden_layers
        self.num_attention_heads, self.num_key_value_heads = num_attention_heads, num_key_value_heads
        self.is_training = is_training

    def get_config(self):
        return MiniMaxText01Config(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
            head_dim=self.hidden_size // self.num_attention_heads, rotary_dim=4, intermediate_size=37,
            num_local_experts=4, num_experts_per_tok=2, attn_type_list=[0, 1], block_size=4,
            max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )

    def prepare_config_and_inputs_for_common(self):
        input_ids = common.ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        # right padding: row 0 full, the last row ends in two pads (a stock mask, no holes)
        attention_mask = torch.ones(self.batch_size, self.seq_length, dtype=torch.long, device=input_ids.device)
        attention_mask[-1, -2:] = 0
        return self.get_config(), {"input_ids": input_ids, "attention_mask": attention_mask}


class MiniMaxText01CommonTest(common.ModelTesterMixin, generation.GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (MiniMaxText01Model, MiniMaxText01ForCausalLM)
    # transformers runs its `_init_weights` coverage test only for models whose files carry a copyright year >= 2023
    test_can_init_all_missing_weights_before_2023 = True

    @classmethod
    def setUpClass(cls):
        # Named in transformers' model-mapping tables, as its own models are: its tests pick the base model and the
        # causal-LM head from these names (labels for the head, training of heads only, the shift_labels and RoPE
        # tests)
        tables = ((common.MODEL_MAPPING_NAMES, MiniMaxText01Model),
                  (common.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MiniMaxText01ForCausalLM))
        cls.mappings = [unittest.mock.patch.dict(table, {MiniMaxText01Config.model_type: model_class.__name__})
                        for table, model_class in tables]
        for mapping in cls.mappings:
            mapping.start()

    @classmethod
    def tearDownClass(cls):
        for mapping in cls.mappings:
            mapping.stop()

    def setUp(self):
        self.model_tester = MiniMaxText01ModelTester(self)

    def test_attention_outputs(self):
        """Overridden: lightning layers compute no attention matrix, so `attentions` holds one [B, H, T, T] tensor
        per softmax layer (transformers' test expects one per layer). Checked here: the count, the shape, and that
        each row is a causal distribution over the real tokens."""
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        B, T, H = self.model_tester.batch_size, self.model_tester.seq_length, self.model_tester.num_attention_heads
        mask = inputs["attention_mask"].bool()  # [B, T]
        visible = mask[:, None, :] & torch.ones(T, T, dtype=torch.bool).tril()  # [B, T queries, T keys]
        for model_class in self.all_model_classes:
            model = model_class._from_config(config, attn_implementation="eager").eval()
            with torch.no_grad():
                attentions = model(**inputs, output_attentions=True).attentions
            self.assertEqual(len(attentions), sum(config.attn_type_list))
            for weights in attentions:
                self.assertEqual(tuple(weights.shape), (B, H, T, T))
                rows = weights.transpose(1, 2)[mask]  # [real queries, H, T keys]
                hidden = ~visible[mask][:, None, :].expand_as(rows)  # future keys and pads
                self.assertEqual(rows[hidden].abs().max().item(), 0.0)
                torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:2]))

    def test_generation_tester_mixin_inheritance(self):
        """Asks for GenerationTesterMixin, which runs only where its file could be had."""
        if not HAS_GENERATION_TESTS:
            self.skipTest("transformers' sdist lacks tests/generation/test_utils.py: GenerationTesterMixin is a "
                          "placeholder here")
        super().test_generation_tester_mixin_inheritance()


class ChunkedPrefillModelTester(MiniMaxText01ModelTester):
    """The same, with prompts fed through the cache 3 tokens at a time (`prefill_chunk_size`)."""

    def get_config(self):
        config = super().get_config()
        config.prefill_chunk_size = 3
        return config


class MiniMaxText01ChunkedPrefillCommonTest(MiniMaxText01CommonTest):
    """Every common test again on the chunked-prefill path (whole prompts while autograd records)."""

    def setUp(self):
        self.model_tester = ChunkedPrefillModelTester(self)
