"""TinyGPT: a readable deep-learning library that trains a GPT from its own small parts."""
from tinygpt.backend import manual_seed
from tinygpt.buffer import Buffer
from tinygpt.threads import get_num_threads, set_num_threads
from tinygpt.tensor import GradientFunction, Tensor, apply_op, is_grad_enabled, no_grad
from tinygpt.utils import DType
from tinygpt.instruments import profile

__version__ = "0.1.0"
__all__ = ["Buffer", "DType", "GradientFunction", "Tensor", "apply_op", "get_num_threads", "is_grad_enabled", "manual_seed",
           "no_grad", "profile", "set_num_threads"]
