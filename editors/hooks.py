"""The one place for hooks into layers and for token positions.

- :func:`text_layers` / :func:`fc2_name`: the text encoder's blocks under transformers 4 (``text_model.``)
  and 5 (no prefix) alike.
- :func:`capture`: record the inputs or outputs of modules during a forward.
- :func:`add_at_positions`: add vectors to a module's output at given (batch, token) positions, e.g. EMCID's
  δ at the subject token of block L.
- :func:`subject_token_positions`: where a concept's BPE tokens sit inside a tokenised prompt.
- :func:`layer_call`: the exact inputs of one encoder block, to replay blocks one at a time.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import torch


# --------------------------------------------------------------------------------------------------
# module lookup
# --------------------------------------------------------------------------------------------------
def text_model(text_encoder: torch.nn.Module) -> torch.nn.Module:
    """The CLIP text transformer (``text_encoder.text_model`` in transformers 4, the encoder itself in 5)."""
    return getattr(text_encoder, "text_model", text_encoder)


def text_layers(text_encoder: torch.nn.Module) -> torch.nn.ModuleList:
    return text_model(text_encoder).encoder.layers


def text_prefix(text_encoder: torch.nn.Module) -> str:
    return "text_model." if hasattr(text_encoder, "text_model") else ""


def fc2_name(text_encoder: torch.nn.Module, layer: int, component: str = "text_encoder") -> str:
    """Pipeline tensor name of ``layers.{layer}.mlp.fc2.weight``."""
    return f"{component}.{text_prefix(text_encoder)}encoder.layers.{layer}.mlp.fc2.weight"


def cross_attention_modules(unet: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """Every cross-attention (``attn2``) module of the UNet, in ``named_modules`` order."""
    return [(n, m) for n, m in unet.named_modules() if n.endswith("attn2")]


# --------------------------------------------------------------------------------------------------
# capture and edit
# --------------------------------------------------------------------------------------------------
@dataclass
class Captured:
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


@contextlib.contextmanager
def capture(modules: dict[str, torch.nn.Module], inputs: bool = True, outputs: bool = False,
            detach: bool = True) -> Iterator[Captured]:
    """Record the first positional input and/or the output of each named module during the block."""
    rec = Captured()
    handles = []

    def make(name: str):
        def hook(_m, args, out):
            if inputs:
                rec.inputs[name] = args[0].detach() if detach else args[0]
            if outputs:
                o = out[0] if isinstance(out, tuple) else out
                rec.outputs[name] = o.detach() if detach else o
        return hook

    try:
        for name, m in modules.items():
            handles.append(m.register_forward_hook(make(name)))
        yield rec
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def add_at_positions(module: torch.nn.Module, rows: torch.Tensor, cols: torch.Tensor,
                     vectors: torch.Tensor) -> Iterator[None]:
    """Add ``vectors[i]`` to ``module``'s output at ``[rows[i], cols[i]]`` during the block (differentiable)."""

    def hook(_m, _args, out):
        hidden = out[0] if isinstance(out, tuple) else out
        delta = torch.zeros_like(hidden)
        delta = delta.index_put((rows, cols), vectors.to(hidden.dtype))
        hidden = hidden + delta
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class StopForward(Exception):
    """Raised by :func:`stop_after` to end a forward early once the wanted activations are captured."""


@contextlib.contextmanager
def stop_after(module: torch.nn.Module) -> Iterator[None]:
    """Abort the forward right after ``module`` runs (catch :class:`StopForward` around the call)."""

    def hook(*_):
        raise StopForward

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@dataclass
class LayerCall:
    """The exact call the encoder makes to one of its blocks: hidden states plus the other args/kwargs."""

    hidden: torch.Tensor
    args: tuple
    kwargs: dict

    def run(self, block: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        """Run ``block`` on ``hidden`` with the recorded mask and kwargs; returns its hidden-state output."""
        out = block(hidden, *self.args, **self.kwargs)
        return out[0] if isinstance(out, tuple) else out


def layer_call(text_encoder: torch.nn.Module, input_ids: torch.Tensor, layer: int = 0) -> LayerCall:
    """What the encoder passes to block ``layer`` for ``input_ids`` (the forward stops there).

    Lets a caller replay the blocks one at a time with its own hidden states (EMCID stage II walks the layers
    once instead of re-running the whole encoder per edited layer). The recorded attention mask belongs to this
    batch shape; take a new call for another shape.
    """
    block = text_layers(text_encoder)[layer]
    rec: dict = {}

    def pre_hook(_m, args, kwargs):
        rec["call"] = LayerCall(args[0].detach(), tuple(args[1:]), dict(kwargs))
        raise StopForward

    handle = block.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        text_encoder(input_ids)
    except StopForward:
        pass
    finally:
        handle.remove()
    if "call" not in rec:
        raise RuntimeError(f"text-encoder block {layer} was not called during the forward")
    return rec["call"]


# --------------------------------------------------------------------------------------------------
# token positions
# --------------------------------------------------------------------------------------------------
def subject_token_positions(tokenizer, template: str, subject: str) -> list[int]:
    """Indices (BOS included, so into the encoder's sequence) of ``subject``'s tokens in ``template.format(subject)``.

    The subject is located by tokenising the text before its slot: CLIP's BPE tokenises words
    independently, so the prefix's token count is where the subject starts.
    """
    if template.count("{}") != 1:
        raise ValueError(f"template {template!r} must hold exactly one '{{}}' slot")
    prefix = template.split("{}")[0]
    n_prefix = len(tokenizer(prefix.strip(), add_special_tokens=False).input_ids) if prefix.strip() else 0
    n_subject = len(tokenizer(subject, add_special_tokens=False).input_ids)
    if n_subject == 0:
        raise ValueError(f"subject {subject!r} has no tokens")
    start = 1 + n_prefix  # 1 for BOS
    full = tokenizer(template.format(subject)).input_ids
    if start + n_subject > min(len(full) - 1, tokenizer.model_max_length - 1):
        raise ValueError(f"prompt {template.format(subject)!r} does not fit in {tokenizer.model_max_length} tokens")
    return list(range(start, start + n_subject))


def subject_last_positions(tokenizer, templates: Sequence[str], subject: str) -> list[int]:
    """EMCID/ROME's ``subject_last`` token of each prompt."""
    return [subject_token_positions(tokenizer, t, subject)[-1] for t in templates]


def tokenize(tokenizer, prompts: Sequence[str], device: torch.device | str = "cpu",
             pad_to_max: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask). ``pad_to_max`` pads to 77 as the pipeline does; else to the longest."""
    enc = tokenizer(list(prompts), padding="max_length" if pad_to_max else "longest",
                    max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    return enc.input_ids.to(device), enc.attention_mask.to(device)


def last_token_indices(attention_mask: torch.Tensor) -> torch.Tensor:
    """UCE/ReFACT's "last subject token": ``attention_mask.sum() - 2``, the token just before EOS.

    For the empty prompt this is 0 (BOS), which is what UCE's "towards unconditional" guide uses.
    """
    return attention_mask.long().sum(-1) - 2


def align_tokens_greedy(src_ids: Sequence[int], dst_ids: Sequence[int],
                        equivalent: dict[int, int] | None = None) -> list[int]:
    """TIME's alignment of every source position to a destination position (both padded to the same length).

    Walking the source left to right with a pointer into the destination, each source token is matched
    to the next equal destination token at or after the pointer (ids mapped through ``equivalent`` first,
    e.g. "an" -> "a"); a token with no match takes the pointer's position. The pointer then moves past
    the chosen position, so left-over positions map to the following tokens and padding of the
    destination; positions past its end map to its last position.
    """
    eq = equivalent or {}
    src = [eq.get(int(t), int(t)) for t in src_ids]
    dst = [eq.get(int(t), int(t)) for t in dst_ids]
    last = len(dst) - 1
    out: list[int] = []
    j = 0
    for tok in src:
        k = next((k for k in range(j, len(dst)) if dst[k] == tok), None)
        pos = min(k if k is not None else j, last)
        out.append(pos)
        j = pos + 1
    return out
