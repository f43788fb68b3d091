"""Process-level CPU settings."""
from __future__ import annotations

import cv2
import torch

from segany import runtime


def test_thread_limit_reaches_torch_and_opencv():
    before = torch.get_num_threads(), cv2.getNumThreads()
    try:
        runtime.limit_cpu_threads(1)
        assert (torch.get_num_threads(), cv2.getNumThreads()) == (1, 1)
    finally:
        torch.set_num_threads(before[0])
        cv2.setNumThreads(before[1])
