"""TinyGPT's `shakespeare-char-cpu` run beside nanoGPT's, from the same initial weights on the same batches.

nanoGPT's side is its model in PyTorch (tinygpt.bench.build_torch: tied LM head, no biases), trained the
way its train.py does: torch.optim.AdamW with weight decay on 2-d parameters only, the warmup + cosine
learning rate, gradient clipping at 1.0. Both see the same bytes, split and batches. Prints both training
losses as they go and, at the end, each model's loss over the whole validation split (every
block_size window, so no evaluation noise).

    python benchmarks/bench_nanogpt_loss.py --seed 1337 --gelu tanh    # about 5 minutes on 2 cores
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.nn import functional as F

from tinygpt import backend
from tinygpt.bench import build_torch
from tinygpt.dataset import get_batch
from tinygpt.optimizers import cosine_schedule
from tinygpt.corpus import corpus_path, load_tokens, train_tokenizer
from tinygpt.evaluation import split_windows, whole_split_loss
from tinygpt.train import build_model, build_optimizer, resolve_config, train_step


def nanogpt_trainer(model: torch.nn.Module, config):
    """One nanoGPT training iteration (its train.py loop body, without gradient accumulation)."""
    parameters = list(model.parameters())
    optimizer = torch.optim.AdamW([{"params": [p for p in parameters if p.dim() >= 2], "weight_decay": config.weight_decay},
                                   {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0}],
                                  lr=config.learning_rate, betas=(config.beta1, config.beta2))
    schedule = cosine_schedule(config.learning_rate, config.min_lr, config.warmup_iters, config.lr_decay_iters or config.max_iters)

    def step(iteration: int, x: np.ndarray, y: np.ndarray) -> float:
        for group in optimizer.param_groups:
            group["lr"] = schedule(iteration)
        logits = model(torch.from_numpy(x.astype(np.int64)))
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), torch.from_numpy(y.astype(np.int64)).view(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, config.grad_clip)
        optimizer.step()
        return loss.item()
    return step


@torch.no_grad()
def nanogpt_split_loss(model: torch.nn.Module, tokens: np.ndarray, config, max_tokens: int) -> float:
    inputs, targets = split_windows(tokens, config.model.max_seq_length, max_tokens)
    total = 0.0
    for start in range(0, len(inputs), config.batch_size):
        logits = model(torch.from_numpy(inputs[start:start + config.batch_size].astype(np.int64)))
        labels = torch.from_numpy(targets[start:start + config.batch_size].astype(np.int64))
        total += F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), reduction="sum").item()
    return total / max(targets.size, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--gelu", choices=["tanh", "erf"], default="tanh", help="nanoGPT's GELU: tanh (TinyGPT's, GPT-2's) or erf (nanoGPT's)")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--log-interval", type=int, default=250)
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 iterations, the first 4,096 validation tokens")
    args = parser.parse_args()
    iterations, val_tokens = (3, 4096) if args.quick else (args.iters, 1 << 20)
    config = resolve_config({"seed": args.seed, "max_iters": iterations, "lr_decay_iters": args.iters}, "shakespeare-char-cpu")
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)  # the two alternate step by step: each gets the other core's BLAS threads out of its way

    path = corpus_path(config)
    train_tokens, val = load_tokens(path, train_tokenizer(path, config.model.vocab_size), config)
    backend.manual_seed(config.seed)
    ours = build_model(config)
    our_optimizer = build_optimizer(ours, config)
    settings = config.settings()
    torch_config = {key: settings[key] for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias")}
    torch_config["gelu"] = "none" if args.gelu == "erf" else "tanh"
    theirs = build_torch(torch_config, {name: p.numpy() for name, p in ours.named_parameters()})
    their_step = nanogpt_trainer(theirs, config)

    print(f"seed {args.seed}, nanoGPT's GELU {args.gelu}, {iterations} iterations of shakespeare-char-cpu")
    rng, started = np.random.default_rng(args.seed), time.perf_counter()
    for iteration in range(iterations):
        x, y = get_batch(train_tokens, config.model.max_seq_length, config.batch_size, rng)
        (our_loss, _), their_loss = train_step(ours, our_optimizer, x, y, config), their_step(iteration, x, y)
        if iteration % args.log_interval == 0 or iteration == iterations - 1:
            print(f"iter {iteration:5d}: training loss tinygpt {our_loss:.4f}  nanoGPT {their_loss:.4f}  "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
    our_val, covered = whole_split_loss(ours, val, config, val_tokens)
    their_val = nanogpt_split_loss(theirs.eval(), val, config, val_tokens)
    print(f"val loss over {covered:,} tokens: tinygpt {our_val:.4f}  nanoGPT {their_val:.4f}  "
          f"difference {our_val - their_val:+.4f}")
    print(f"reproduce: python benchmarks/bench_nanogpt_loss.py --seed {args.seed} --gelu {args.gelu}"
          + (" --quick" if args.quick else f" --iters {args.iters}"))


if __name__ == "__main__":
    main()
