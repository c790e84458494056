"""Any 2-D padding mask and packed (padding-free) batches, against the unpadded rows and the float64 reference.

Pads are tokens with a lightning log-decay of 0 and a zero value: they neither add to nor decay the state, so
left, right and inner padding all leave every real token exact, and a cache built from a padded batch can be
continued. Packed rows (position_ids restarting at 0) reset the lightning state at each start and attend
block-diagonally, so they equal the sequences run separately, gradients included.
"""

import pytest
import torch
from helpers import cache_of, l2_rel_err, random_ids, tiny_model
from minimax_code import load
from reference import reference_text_logits

mm = load("modeling_minimax_text_01")


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def pad_rows(rows, layout):
    """Stack 1-D id rows into [B, T] with pads placed per `layout`: left, right, or holes (pads inside the row and
    at both ends). Returns (ids, mask, positions of each row's real tokens)."""
    T = max(len(r) for r in rows) + 4
    ids, mask, where = torch.zeros(len(rows), T, dtype=torch.long), torch.zeros(len(rows), T, dtype=torch.long), []
    for b, row in enumerate(rows):
        free = T - len(row)
        if layout == "left":
            slots = list(range(free, T))
        elif layout == "right":
            slots = list(range(len(row)))
        else:  # one pad in front, pads after every third token, the rest at the end
            slots, t = [], 1
            while len(slots) < len(row):
                slots.append(t)
                t += 2 if len(slots) % 3 == 0 and t + 2 < T - (len(row) - len(slots)) else 1
        ids[b, slots], mask[b, slots] = row, 1
        where.append(torch.tensor(slots))
    return ids, mask, where


# ------------------------------------------------------------------------------------------------ any padding


@pytest.mark.parametrize("layout", ["left", "right", "holes"])
def test_any_padding_with_the_cache_on_equals_the_unpadded_rows(model, layout):
    rows = [random_ids(1, 21, 1)[0], random_ids(1, 13, 2)[0], random_ids(1, 17, 3)[0]]
    ids, mask, where = pad_rows(rows, layout)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, use_cache=True).logits
        for b, row in enumerate(rows):
            alone = model(input_ids=row[None]).logits[0]
            assert l2_rel_err(padded[b, where[b]], alone) < 1e-5, (layout, b)


@pytest.mark.parametrize("layout", ["left", "right", "holes"])
def test_padded_batch_matches_the_float64_reference(layout):
    model = tiny_model(dtype=torch.float64)
    ids, mask, where = pad_rows([random_ids(1, 19, 4)[0], random_ids(1, 11, 5)[0]], layout)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).logits
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    expected = reference_text_logits(model.state_dict(), model.config, input_ids=ids, attention_mask=mask,
                                     position_ids=positions)
    for b in range(2):
        assert l2_rel_err(out[b, where[b]], expected[b, where[b]]) < 1e-6  # RoPE tables are fp32 by design


def test_right_padded_cache_continues_exactly_in_a_manual_loop(model):
    """Prefill a right-padded batch, then decode 4 tokens per row with the growing mask: every step's logits equal
    those of the row run alone (the state after the pads is the state after the last real token)."""
    rows = [random_ids(1, 15, 6)[0], random_ids(1, 9, 7)[0]]
    ids, mask, _ = pad_rows(rows, "right")
    steps = random_ids(1, 8, 8).view(2, 4)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
        cache = out.cache if hasattr(out, "cache") else out.past_key_values
        for t in range(4):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], dim=1)
            step = model(input_ids=steps[:, t : t + 1], attention_mask=mask, **{mm.CACHE_FIELD: cache}).logits
            for b, row in enumerate(rows):
                alone = model(input_ids=torch.cat([row, steps[b, : t + 1]])[None]).logits[0, -1]
                assert l2_rel_err(step[b, -1], alone) < 1e-5, (t, b)


def test_right_padded_cache_without_a_mask_is_refused_when_continued(model):
    ids, mask, _ = pad_rows([random_ids(1, 10, 9)[0], random_ids(1, 6, 10)[0]], "right")
    with torch.no_grad():
        cache = cache_of(model(input_ids=ids, attention_mask=mask))
        with pytest.raises(ValueError, match="pass the attention_mask covering the cached and the new tokens"):
            model(input_ids=ids[:, :1], **{mm.CACHE_FIELD: cache})


def test_generate_on_a_left_padded_batch_equals_each_prompt_alone(model):
    """(Right-padded prompts cannot work in generate() for any decoder: it samples after the last slot, a pad.)"""
    rows = [random_ids(1, 12, 11)[0], random_ids(1, 7, 12)[0]]
    ids, mask, _ = pad_rows(rows, "left")
    settings = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    batched = model.generate(input_ids=ids, attention_mask=mask, **settings)[:, ids.shape[1] :]
    for b, row in enumerate(rows):
        alone = model.generate(input_ids=row[None], attention_mask=torch.ones(1, len(row), dtype=torch.long), **settings)
        assert batched[b].tolist() == alone[0, len(row) :].tolist(), b


def test_a_prompt_ending_in_the_pad_id_still_generates(model):
    """transformers infers a right-padded mask when a prompt ends with the pad id; that must not fail."""
    ids = random_ids(1, 9, 13)
    ids[0, -1] = 0
    out = model.generate(input_ids=ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 12)


# ------------------------------------------------------------------------------------------------ packed sequences


def packed(rows_per_batch_row):
    """Concatenate sequences into rows (right-padding rows to the same length): ids, position_ids, mask."""
    T = max(sum(len(s) for s in seqs) for seqs in rows_per_batch_row)
    B = len(rows_per_batch_row)
    ids, positions, mask = (torch.zeros(B, T, dtype=torch.long) for _ in range(3))
    for b, seqs in enumerate(rows_per_batch_row):
        t = 0
        for seq in seqs:
            ids[b, t : t + len(seq)], positions[b, t : t + len(seq)] = seq, torch.arange(len(seq))
            mask[b, t : t + len(seq)] = 1
            t += len(seq)
    return ids, positions, mask


def test_packed_sequences_equal_the_sequences_run_separately():
    model = tiny_model()
    seqs = [[random_ids(1, 11, 20)[0], random_ids(1, 14, 21)[0], random_ids(1, 5, 22)[0]], [random_ids(1, 20, 23)[0], random_ids(1, 9, 24)[0]]]
    ids, positions, mask = packed(seqs)
    with torch.no_grad():
        out = model(input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=False).logits
        for b, row in enumerate(seqs):
            t = 0
            for seq in row:
                alone = model(input_ids=seq[None]).logits[0]
                assert l2_rel_err(out[b, t : t + len(seq)], alone) < 1e-5
                t += len(seq)


def test_packed_without_attention_mask_matches_the_float64_reference():
    """The padding-free layout TRL's flattening collators produce: one row, no mask, position_ids restarting."""
    model = tiny_model(dtype=torch.float64)
    ids, positions, _ = packed([[random_ids(1, 9, 30)[0], random_ids(1, 16, 31)[0], random_ids(1, 6, 32)[0]]])
    with torch.no_grad():
        out = model(input_ids=ids, position_ids=positions).logits
    expected = reference_text_logits(model.state_dict(), model.config, input_ids=ids, position_ids=positions)
    assert l2_rel_err(out, expected) < 1e-6  # RoPE tables are fp32 by design


def test_packed_gradients_equal_the_sum_over_separate_sequences():
    """Training on a packed row: loss and every parameter's gradient equal those of the sequences run one by one
    (fp32, rel <= 1e-5)."""
    model = tiny_model().train()
    seqs = [random_ids(1, 13, 40)[0], random_ids(1, 10, 41)[0], random_ids(1, 7, 42)[0]]
    ids, positions, _ = packed([seqs])

    def loss_of(input_ids, position_ids=None):
        logits = model(input_ids=input_ids, position_ids=position_ids).logits
        return torch.nn.functional.cross_entropy(logits[0, :-1], input_ids[0, 1:], reduction="sum")

    model.zero_grad()
    # the packed loss over each sequence's own next tokens (no target across a boundary)
    logits = model(input_ids=ids, position_ids=positions).logits[0]
    packed_loss, t = 0.0, 0
    for seq in seqs:
        packed_loss = packed_loss + torch.nn.functional.cross_entropy(logits[t : t + len(seq) - 1], seq[1:], reduction="sum")
        t += len(seq)
    packed_loss.backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    model.zero_grad()
    separate_loss = sum(loss_of(seq[None]) for seq in seqs)
    separate_loss.backward()
    assert l2_rel_err(packed_loss.detach(), separate_loss.detach()) < 1e-6
    assert packed_grads.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if p.grad is not None:
            assert l2_rel_err(packed_grads[name], p.grad) < 1e-5, name


def test_a_cache_filled_from_packed_sequences_cannot_be_continued(model):
    ids, positions, _ = packed([[random_ids(1, 6, 50)[0], random_ids(1, 5, 51)[0]]])
    with torch.no_grad():
        cache = cache_of(model(input_ids=ids, position_ids=positions, use_cache=True))
        with pytest.raises(ValueError, match="filled from packed sequences"):
            model(input_ids=ids[:, :1], **{mm.CACHE_FIELD: cache})


def test_packed_sequences_after_cached_tokens_are_refused(model):
    with torch.no_grad():
        cache = cache_of(model(input_ids=random_ids(1, 4, 52)))
        ids, positions, _ = packed([[random_ids(1, 3, 53)[0], random_ids(1, 3, 54)[0]]])
        positions[:, :3] += 4  # the first sequence continues the cached one, the second is packed after it
        with pytest.raises(ValueError, match="cannot follow cached tokens"):
            model(input_ids=ids, position_ids=positions, **{mm.CACHE_FIELD: cache})
