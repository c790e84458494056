"""Part 1 of scripts/gpu_check.py, the checks: every GPU path against the plain path on a tiny model in fp32, the
same weights on both sides.
- fla prefill: the lightning prefill through flash-linear-attention's Triton kernel vs the plain chunked path, on a
  left-padded batch prefilled with a cache, a cached continuation and decode steps, and on packed sequences
  (logits and input gradient);
- grouped-mm experts (`config.moe_grouped_mm`) vs the per-expert loop;
- static-cache decode: `generate(..., cache_implementation="static")` vs the dynamic cache, eager and with
  `torch.compile(model.forward, fullgraph=True, mode="reduce-overhead")` (CUDA graphs);
- bf16 vs fp32 logits.
Paths that cannot run here (fla, grouped matmul and CUDA graphs need CUDA) are reported as skipped, with why.
"""

import sys
from pathlib import Path
from unittest.mock import patch

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_report import Report, Skip, patched, rel_err  # noqa: E402
from make_tiny_checkpoint import tiny_text_config  # noqa: E402
from minimax_code import load  # noqa: E402

modeling = load("modeling_minimax_text_01")
kernels = load("lightning_attention")
hybrid_cache = load("cache_minimax_text_01")


def check_model(device, dtype=torch.float32, std=0.2) -> torch.nn.Module:
    """The tiny model, weights ~ N(0, std): 0.2 is 10x the init, so every term shows in a comparison."""
    torch.manual_seed(0)
    model = modeling.MiniMaxText01ForCausalLM(tiny_text_config()).eval()
    for p in model.parameters():
        p.data.normal_(0, std)
    return model.to(device=device, dtype=dtype)


def padded_prefill_continuation_decode(model, ids, mask, prefill: int):
    """Prefill ids[:, :prefill] with a cache (left-padded batch), continue with all but the last 2 tokens at once
    (from the cached state), then decode the last 2 one by one. Returns (logits [B, T, V], lightning states)."""
    T = ids.shape[1]
    with torch.no_grad():
        out = model(ids[:, :prefill], attention_mask=mask[:, :prefill], use_cache=True)
        logits = [out.logits]
        for stop in (T - 2, T - 1, T):
            cache = getattr(out, modeling.CACHE_FIELD)
            start = cache.get_seq_length()
            out = model(ids[:, start:stop], attention_mask=mask[:, :stop], past_key_values=cache, use_cache=True)
            logits.append(out.logits)
    cache = getattr(out, modeling.CACHE_FIELD)
    states = [layer.state for layer in cache.layers if isinstance(layer, hybrid_cache.LightningStateLayer)]
    return torch.cat(logits, dim=1), states


def padded_batch(device, length=70, padding=9, seed=3):
    ids = torch.randint(0, 512, (2, length), generator=torch.Generator().manual_seed(seed)).to(device)
    mask = torch.ones_like(ids)
    mask[0, :padding] = 0
    return ids, mask


def packed_batch(device, rows=((11, 30, 25), (40, 20)), seed=4):
    """Rows of packed sequences (position_ids restart at 0 where one begins), right-padded to one length:
    ids, position_ids, attention_mask [B, T]."""
    T = max(sum(row) for row in rows)
    ids = torch.randint(0, 512, (len(rows), T), generator=torch.Generator().manual_seed(seed))
    positions, mask = torch.zeros_like(ids), torch.zeros_like(ids)
    for b, lengths in enumerate(rows):
        positions[b, : sum(lengths)] = torch.cat([torch.arange(n) for n in lengths])
        mask[b, : sum(lengths)] = 1
    return ids.to(device), positions.to(device), mask.to(device)


def packed_logits_and_input_gradient(model, ids, positions, mask):
    """Logits of a packed batch (no cache) and the gradient of their sum over real tokens w.r.t. the embeddings."""
    embeds = model.model.embed_tokens(ids).detach().requires_grad_(True)
    logits = model(inputs_embeds=embeds, position_ids=positions, attention_mask=mask, use_cache=False).logits
    logits[mask.bool()].sum().backward()
    return logits.detach(), embeds.grad


def check_fla_prefill(device):
    if device.type != "cuda":
        raise Skip("fla's Triton kernels run on CUDA only (on CPU `make test-triton` runs them in the interpreter)")
    if kernels.chunk_simple_gla is None:
        raise Skip("flash-linear-attention is not installed (pip install flash-linear-attention==0.6.0)")
    model = check_model(device)
    ids, mask = padded_batch(device)
    calls = []

    def counted(*args):
        calls.append(args[0].shape[2])
        return kernels.lightning_attention_fla(*args)

    packed = packed_batch(device)
    # a spy on the entry the setting selects
    with patch.dict(kernels.LIGHTNING_KERNELS, fla=counted), patched(model.config, "lightning_impl", "fla"):
        fla_logits, fla_states = padded_prefill_continuation_decode(model, ids, mask, 40)
        fla_packed, fla_grad = packed_logits_and_input_gradient(model, *packed)
    if not calls:
        raise RuntimeError("the model never called lightning_attention_fla on CUDA")
    with patched(model.config, "lightning_impl", "chunked"):
        plain_logits, plain_states = padded_prefill_continuation_decode(model, ids, mask, 40)
        plain_packed, plain_grad = packed_logits_and_input_gradient(model, *packed)
    keep, keep_packed = mask.bool(), packed[2].bool()
    errors = {"logits": rel_err(fla_logits[keep], plain_logits[keep]),
              "states": max(rel_err(a, b) for a, b in zip(fla_states, plain_states)),
              "packed logits": rel_err(fla_packed[keep_packed], plain_packed[keep_packed]),
              "packed input gradient": rel_err(fla_grad, plain_grad)}
    return max(errors.values()), ", ".join(f"{k} {v:.1e}" for k, v in errors.items()) + f"; {len(calls)} fla calls"


def check_grouped_mm(device):
    if device.type != "cuda":
        raise Skip("the grouped-mm experts run on CUDA only")
    if modeling._grouped_mm is None:
        raise Skip(f"torch {torch.__version__} has no grouped matmul")
    model = check_model(device)
    ids, _ = padded_batch(device, length=37, padding=0)
    blocks = [m for m in model.modules() if isinstance(m, modeling.MiniMaxText01SparseMoeBlock)]
    grouped_forward, calls = modeling.grouped_experts_forward, []

    def counted(*args):
        calls.append(args[0].shape[0])
        return grouped_forward(*args)

    logits = {}
    for grouped in (True, False):
        for block in blocks:
            block.grouped_mm = grouped
        with torch.no_grad(), patched(modeling, "grouped_experts_forward", counted):
            logits[grouped] = model(ids, use_cache=False).logits
    if len(calls) != len(blocks):
        raise RuntimeError(f"the grouped path ran in {len(calls)} of {len(blocks)} MoE blocks")
    return rel_err(logits[True], logits[False]), f"{len(blocks)} MoE blocks took the grouped path"


def generated(model, ids, **kwargs):
    out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=0, output_scores=True,
                         return_dict_in_generate=True, disable_compile=True, **kwargs)
    return out.sequences, torch.stack(out.scores, dim=1)


def check_static_cache(device, compiled: bool):
    if compiled and device.type != "cuda":
        raise Skip("CUDA graphs (mode='reduce-overhead') need a CUDA device")
    model = check_model(device)
    ids, _ = padded_batch(device, length=9, padding=0)
    with torch.no_grad():
        dynamic_tokens, dynamic_scores = generated(model, ids)
        static_tokens, static_scores = generated(model, ids, cache_implementation="static")
        note = "eager"
        if compiled:
            model.forward = torch.compile(model.forward, fullgraph=True, mode="reduce-overhead")
            static_tokens, static_scores = generated(model, ids, cache_implementation="static")
            note = "torch.compile(fullgraph=True, mode='reduce-overhead')"
    if not torch.equal(static_tokens, dynamic_tokens):
        raise RuntimeError(f"greedy tokens differ from the dynamic cache's ({note})")
    return rel_err(static_scores, dynamic_scores), f"{note}; greedy tokens equal; error of the scores"


def check_bf16(device):
    ids, mask = padded_batch(device)
    keep = mask.bool()
    with torch.no_grad():
        # the init's scale (0.02): with 10x larger weights bf16 rounding compounds to ~0.3 over 8 layers
        logits = {dtype: check_model(device, dtype, std=0.02)(ids, attention_mask=mask).logits for dtype in
                  (torch.float32, torch.bfloat16)}
    fp32, bf16 = logits[torch.float32][keep], logits[torch.bfloat16][keep]
    agree = (fp32.argmax(-1) == bf16.argmax(-1)).float().mean().item()
    return rel_err(bf16, fp32), f"top-1 token equal at {100 * agree:.0f} % of positions"


def run_checks(report: Report, device):
    report.check("fla prefill vs plain chunked path (padded, cached, decode; packed, gradient)",
                 lambda: check_fla_prefill(device), tolerance=1e-2)  # fla's fp32 tl.dot runs in TF32 on GPUs
    report.check("grouped-mm experts vs per-expert loop", lambda: check_grouped_mm(device), tolerance=1e-4)
    report.check("static-cache generate vs dynamic cache (eager)", lambda: check_static_cache(device, False),
                 tolerance=1e-4)
    report.check("static-cache compiled decode (CUDA graphs) vs dynamic cache",
                 lambda: check_static_cache(device, True), tolerance=1e-3)
    report.check("bf16 vs fp32 logits", lambda: check_bf16(device), tolerance=5e-2)

