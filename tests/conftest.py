import os
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
for _path in (_ROOT, os.path.join(_ROOT, "scripts")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import torch

# The test tensors are tiny: one thread avoids oversubscribing the 2-core CI machine (several times faster there).
torch.set_num_threads(1)
