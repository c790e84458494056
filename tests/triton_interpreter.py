"""Run flash-linear-attention's Triton kernels on CPU tensors, through Triton's interpreter (`TRITON_INTERPRET=1`).

Import this module before anything imports `fla` (Triton decides interpreter or compiler when a kernel is
defined, i.e. when fla is imported). It switches the interpreter on and works around its two gaps that fla's
kernels hit (spec parallelism-and-gpu.md section 4; triton 3.9.0, flash-linear-attention 0.6.0):

1. Autotuning benchmarks every config on the GPU driver ("0 active drivers" without one). Every autotuner keeps
   its first config only, so nothing is benchmarked (Triton skips benchmarking for a single config).
2. The interpreter leaves `for i in range(...)` loop variables as Python ints, and fla's kernels call
   `i.to(tl.int64)` on them. The interpreter already rewrites kernel source through an AST transformer (it wraps
   assigned values into interpreter tensors); ours also wraps each loop variable at the top of the loop body.

The interpreter checks a kernel's logic, not GPU behaviour (no TF32, no real autotuning, no timing), and computes
bf16 `tl.dot` on raw bit patterns: test in fp32 (or fp16) only.
"""

import ast
import os
import sys

if ("fla" in sys.modules or "triton" in sys.modules) and os.environ.get("TRITON_INTERPRET") != "1":
    raise RuntimeError(
        "Triton (or fla) was imported before its interpreter was switched on; run the Triton tests with "
        "TRITON_INTERPRET=1 in the environment (`make test-triton`)."
    )
os.environ["TRITON_INTERPRET"] = "1"

from triton.runtime import interpreter  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402

_prune_configs = Autotuner.prune_configs


def _first_config_only(self, kwargs):
    return _prune_configs(self, kwargs)[:1]


class _LoopVariablesAsTensors(interpreter.ASTTransformer):
    """`for i in ...: body` -> `for i in ...: i = interpreter_semantic.to_tensor(i, False); body`."""

    def visit_For(self, node):
        node = self.generic_visit(node)
        if isinstance(node.target, ast.Name):
            wrap = ast.Assign(
                targets=[ast.Name(id=node.target.id, ctx=ast.Store())],
                value=ast.Call(
                    func=ast.Attribute(
                        value=ast.Name(id="interpreter_semantic", ctx=ast.Load()), attr="to_tensor", ctx=ast.Load()
                    ),
                    args=[ast.Name(id=node.target.id, ctx=ast.Load()), ast.Constant(value=False)],
                    keywords=[],
                ),
            )
            node.body.insert(0, ast.copy_location(wrap, node))
        return node


Autotuner.prune_configs = _first_config_only
interpreter.FunctionRewriter.ast_transformer = _LoopVariablesAsTensors()
