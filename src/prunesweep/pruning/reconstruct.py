"""Surgery: turn a masked model into something physically smaller.

* :func:`rebuild_channels` removes pruned channels/neurons for real (Torch-Pruning groups), giving a smaller
  dense model with the same outputs; :func:`rebuild_modules` replaces pruned layers/blocks by ``nn.Identity``
  and :func:`rebuild_heads` shrinks attention modules to their surviving heads. :func:`rebuild` dispatches.
* :func:`sparse_export` stores weights as CSR and reports dense / CSR / gzip sizes;
  :func:`load_sparse_export` turns it back into a dense model.

>>> import torch
>>> from prunesweep.models import LeNet5
>>> from prunesweep.pruning.planner import compute_masks
>>> from prunesweep.pruning.spec import PruningSpec
>>> model = LeNet5()
>>> plan = compute_masks(model, PruningSpec(sparsity=0.5, granularity="channel"))
>>> architecture(model), architecture(rebuild_channels(model, plan, torch.zeros(1, 1, 28, 28)))
('20-50-500-10', '10-25-250-10')
"""

from __future__ import annotations

import gzip
import io
import warnings
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from prunesweep.pruning._util import DEFAULT_INPUT_SHAPE, clone_model
from prunesweep.pruning.plan import MaskPlan, apply_masks, export_state_dict, make_permanent, remove_bypasses
from prunesweep.pruning.structures import Structures
from prunesweep.pruning.units import GRANULARITIES, dependency_graph


def rebuild_channels(model: nn.Module, plan: MaskPlan, example_inputs: torch.Tensor | None = None) -> nn.Module:
    """A deep copy of ``model`` with the plan's pruned units physically removed (dense, smaller, no hooks).

    The plan's masks are (re)applied to the copy first, so the result equals the model masked by ``plan``
    whether or not ``model`` already carries those masks; any unstructured zeros stay as zeros.
    """
    if not plan.kept_units:
        raise ValueError(f"plan has no kept_units: granularity={plan.granularity} is not structured")
    rebuilt = clone_model(model)
    apply_masks(rebuilt, plan)
    make_permanent(rebuilt)
    if example_inputs is None:
        example_inputs = torch.zeros(DEFAULT_INPUT_SHAPE)
    graph = dependency_graph(rebuilt, example_inputs)
    with torch.enable_grad():  # Torch-Pruning's group.prune() works through autograd too
        done: set[nn.Module] = set()
        for layer, kept in plan.kept_units.items():
            module = rebuilt.get_submodule(layer)
            if module in done:
                continue  # its outputs were coupled (a residual add) to an earlier layer's and went with them
            n_units = graph.get_pruner_of_module(module).get_out_channels(module)
            keep = torch.zeros(n_units, dtype=torch.bool)
            keep[kept.cpu()] = True
            pruned = (~keep).nonzero().flatten().tolist()
            if not pruned:
                continue
            # Indices refer to this layer's own outputs, which other groups never renumber: pruning conv1 only
            # touches conv2's *inputs*, so each group can use the plan's original indices. Layers whose outputs
            # are coupled share one group (and, after compute_masks, one keep set), pruned once.
            group = graph.get_pruning_group(module, graph.get_pruner_of_module(module).prune_out_channels, pruned)
            done.update(dep.target.module for dep, _ in group if graph.is_out_channel_pruning_fn(dep.handler))
            group.prune()
    return rebuilt


def _pruned_units(model: nn.Module, plan: MaskPlan, granularity: Structures) -> dict[str, list[int]]:
    out = {}
    for layer, kept in plan.kept_units.items():
        keep = torch.zeros(granularity.count_units(model, layer), dtype=torch.bool)
        keep[kept.cpu()] = True
        out[layer] = (~keep).nonzero().flatten().tolist()
    return out


def _masked_copy(model: nn.Module, plan: MaskPlan) -> nn.Module:
    """A hook-free copy with the plan's zeros baked in (bypass hooks are re-added by apply_masks)."""
    copy = clone_model(model)
    apply_masks(copy, plan)
    make_permanent(copy)
    remove_bypasses(copy)
    return copy


def rebuild_modules(model: nn.Module, plan: MaskPlan, example_inputs: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``model`` with every pruned layer/block unit replaced by ``nn.Identity``."""
    granularity = GRANULARITIES[plan.granularity]()
    rebuilt = _masked_copy(model, plan)
    for layer, pruned in _pruned_units(model, plan, granularity).items():
        units = granularity.units(model, layer)
        for index in pruned:
            parent, _, leaf = units[index].rpartition(".")
            setattr(rebuilt.get_submodule(parent) if parent else rebuilt, leaf, nn.Identity())
    return rebuilt


def _select(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    weight = linear.weight.detach()
    weight = weight[rows] if rows is not None else weight
    weight = weight[:, cols] if cols is not None else weight
    small = nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None)
    small = small.to(device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        small.weight.copy_(weight)
        if linear.bias is not None:
            small.bias.copy_(linear.bias.detach()[rows] if rows is not None else linear.bias.detach())
    return small


def rebuild_heads(model: nn.Module, plan: MaskPlan, example_inputs: torch.Tensor | None = None) -> nn.Module:
    """A copy of ``model`` whose attention modules keep only their surviving heads (smaller q/k/v/out)."""
    rebuilt = _masked_copy(model, plan)
    for layer, kept in plan.kept_units.items():
        attn = rebuilt.get_submodule(layer)
        head_dim = attn.q.out_features // attn.num_heads
        rows = (kept.cpu().sort().values[:, None] * head_dim + torch.arange(head_dim)).flatten()
        attn.q, attn.k, attn.v = (_select(getattr(attn, p), rows=rows) for p in ("q", "k", "v"))
        attn.out = _select(attn.out, cols=rows)
        attn.num_heads = kept.numel()
    return rebuilt


#: granularity name -> physical rebuild (unstructured has none: its zeros are exported sparse instead).
REBUILDERS: dict[str, Callable[[nn.Module, MaskPlan, torch.Tensor | None], nn.Module]] = {
    "channel": rebuild_channels,
    "layer": rebuild_modules,
    "block": rebuild_modules,
    "head": rebuild_heads,
}


def rebuild(model: nn.Module, plan: MaskPlan, example_inputs: torch.Tensor | None = None) -> nn.Module:
    """A physically smaller dense copy of a structurally pruned ``model`` (the live model is untouched).

    Dispatches on the plan's granularity; unstructured plans have no rebuild (use :func:`sparse_export`).
    """
    rebuilder = REBUILDERS.get(plan.granularity)
    if rebuilder is None:
        raise ValueError(f"no physical rebuild for granularity {plan.granularity!r}; known: {sorted(REBUILDERS)}")
    rebuilt = rebuilder(model, plan, example_inputs)
    # Tracing leaves the copy in eval mode; a rebuilt model that is fine-tuned must train like the masked one
    # (BatchNorm on batch statistics), and Lightning keeps the modes it is given.
    modes = {name: module.training for name, module in model.named_modules()}
    for name, module in rebuilt.named_modules():
        module.training = modes.get(name, model.training)
    return rebuilt


def rebuild_like(
    model: nn.Module,
    plan: MaskPlan,
    tensors: Mapping[str, torch.Tensor],
    example_inputs: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors shaped like ``model``'s parameters (keyed by plain name, e.g. an optimizer's momentum buffers), cut
    the way :func:`rebuild` cuts the parameters: keyed by the rebuilt model's names, the removed ones gone.

    They ride through the same surgery as parameters of a copy, so every rebuilder's index bookkeeping (Torch-Pruning
    groups, dropped modules, head rows) applies unchanged: training state carries over to the rebuilt model.
    """
    carrier = clone_model(model)
    with torch.no_grad():
        for name, param in carrier.named_parameters():
            value = tensors.get(name.removesuffix("_orig"))
            if value is not None:
                param.copy_(value)
    cut = rebuild(carrier, plan, example_inputs)
    return {name: param.detach().clone() for name, param in cut.named_parameters() if name in tensors}


def architecture(model: nn.Module) -> str:
    """Output width of every conv/linear layer in registration order, e.g. ``"20-50-500-10"``."""
    widths = []
    for module in model.modules():
        if isinstance(module, nn.modules.conv._ConvNd):
            widths.append(module.out_channels)
        elif isinstance(module, nn.Linear):
            widths.append(module.out_features)
    return "-".join(str(w) for w in widths)


def sparse_export(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Effective state with every >=2-D weight as a CSR matrix (conv kernels flattened to ``out × rest``).

    Returns ``(state, sizes)``: ``sizes["dense_bytes"]`` is the float32 size of all parameters;
    ``csr_bytes`` is values + col_indices + crow_indices of the CSR weights (int32 indices) plus the dense
    bytes of everything else (biases); ``compressed_bytes`` is the gzip'd ``torch.save`` of ``state``.
    """
    dense_state = export_state_dict(model)
    param_names = {name for name, _ in _plain_named_params(model)}
    state: dict[str, torch.Tensor] = {}
    dense_bytes = csr_bytes = 0
    for key, value in dense_state.items():
        value = value.detach().cpu()
        if key in param_names:
            dense_bytes += 4 * value.numel()
        if key in param_names and value.dim() >= 2:
            with warnings.catch_warnings():  # "sparse CSR support is in beta": known, and tested here
                warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
                csr = value.reshape(value.shape[0], -1).to_sparse_csr()
                # int32 indices: half the index bytes, and every layer here has < 2**31 entries per dim.
                csr = torch.sparse_csr_tensor(
                    csr.crow_indices().to(torch.int32),
                    csr.col_indices().to(torch.int32),
                    csr.values(),
                    size=csr.shape,
                    check_invariants=True,
                )
            state[key] = csr
            csr_bytes += sum(
                t.numel() * t.element_size() for t in (csr.values(), csr.col_indices(), csr.crow_indices())
            )
        else:
            state[key] = value.clone()
            if key in param_names:
                csr_bytes += value.numel() * value.element_size()
    buffer = io.BytesIO()
    torch.save(state, buffer)
    sizes = {
        "dense_bytes": dense_bytes,
        "csr_bytes": csr_bytes,
        "compressed_bytes": len(gzip.compress(buffer.getvalue())),
    }
    return state, sizes


def load_sparse_export(template: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """A dense copy of ``template`` (same class and shapes, e.g. a fresh model) loaded from ``state``."""
    model = clone_model(template)
    make_permanent(model)
    reference = model.state_dict()
    dense = {}
    for key, value in state.items():
        if value.layout == torch.sparse_csr:
            value = value.to_dense().reshape(reference[key].shape)
        dense[key] = value
    model.load_state_dict(dense, strict=True)
    return model


def _plain_named_params(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """Parameter names as a plain (unpruned) model would have them."""
    for name, param in model.named_parameters():
        yield (name[: -len("_orig")] if name.endswith("_orig") else name), param
