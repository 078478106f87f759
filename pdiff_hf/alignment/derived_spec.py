"""Permutation specs derived from the module itself: :func:`spec_from_module` traces it with ``torch.fx`` and accepts
only operations it can prove equivariant under a permutation of hidden units (chains of Linear / Conv with norms,
elementwise activations, pooling, flatten); anything else is an :class:`~pdiff_hf.errors.AlignmentError`."""

import operator
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata
from torch.nn import functional as F

from ..errors import AlignmentError

from .spec import Axis, PermutationSpec


# ------------------------------------------------------------------------------------- automatic derivation (fx)
_ELEMENTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Tanh, nn.Sigmoid,
    nn.Softplus, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Tanhshrink, nn.Softsign, nn.Identity,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout,
)  # fmt: skip
# per-channel pooling: every channel pooled on its own, the channel axis (1) is kept
_POOL_MODULES = (
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_ELEMENTWISE_FUNCTIONS = {
    F.relu, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.softplus, F.hardtanh,
    F.hardswish, F.hardsigmoid, F.dropout, F.tanh, F.sigmoid, torch.relu, torch.tanh, torch.sigmoid, torch.exp,
    torch.abs, torch.neg, operator.neg, operator.pos, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax,
}  # fmt: skip
_ELEMENTWISE_METHODS = {
    "relu", "tanh", "sigmoid", "exp", "abs", "neg", "contiguous", "float", "double", "clone", "detach",
    "softmax", "log_softmax",
}  # fmt: skip
# binary ops that are elementwise when the other operand is a Python number
_SCALAR_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.pow, torch.add, torch.mul}
_SCALAR_METHODS = {"add", "sub", "mul", "div", "pow"}
_RESHAPE_FUNCTIONS = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape"}
_REDUCE = {"mean", "sum", "amax", "amin"}


@dataclass(frozen=True)
class _Feat:
    """A value whose axis ``axis`` is permuted by ``group`` in blocks of ``inner``."""

    group: str
    axis: int
    inner: int = 1


def _is_tensor(node: Any) -> bool:
    """Whether an fx node's value (as run by ShapeProp) is one tensor."""
    return isinstance(node, torch.fx.Node) and isinstance(node.meta.get("tensor_meta"), TensorMetadata)


def _shape(node: torch.fx.Node) -> Tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape)


def _nodes_in(args: Any) -> List[torch.fx.Node]:
    out: List[torch.fx.Node] = []
    torch.fx.node.map_arg(args, out.append)
    return out


def spec_from_module(model: nn.Module, example_input: Any) -> PermutationSpec:
    """Derive the permutation spec of a chain of Linear / Conv1d / Conv2d layers with BatchNorm / LayerNorm,
    elementwise activations, per-channel pooling and flatten (``nn.Sequential`` MLPs and CNNs,
    :class:`~pdiff_hf.tasks.MNIST1DCNN`).

    The model is traced with ``torch.fx`` and run once on ``example_input`` (a tensor ``(B, ...)`` or a tuple of
    positional tensors; in eval mode, without gradients, every module's train/eval mode restored afterwards) to know
    each value's shape. Each Linear / Conv output starts a group named after the module; a flatten of ``(C, L)``
    ties the next layer's input axis to the channels in blocks of ``L`` (:class:`Axis` ``inner=L``). Groups that
    reach the output are not permuted.

    Raises:
        AlignmentError: the model cannot be traced, or uses something that is not provably equivariant under a
            permutation of its hidden units: residual adds or any op on two tensors (``x + y``, ``torch.cat``),
            attention and other modules with parameters outside Linear / Conv / BatchNorm / LayerNorm, grouped
            convolutions, parameters used directly in ``forward``, a module called twice, a reshape that splits a
            permuted axis.
    """
    try:
        graph_module = torch.fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types (TraceError, TypeError on control flow, ...)
        raise AlignmentError(
            f"expected a model that torch.fx can trace (no data-dependent control flow), found {type(model).__name__}: "
            f"{type(err).__name__}: {err}; write its PermutationSpec by hand"
        ) from err
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    modes = {name: m.training for name, m in model.named_modules()}
    try:
        model.eval()
        with torch.no_grad():
            ShapeProp(graph_module).propagate(*inputs)
    finally:
        for name, m in model.named_modules():
            m.train(modes[name])
    return _Derivation(model, graph_module).run()


class _Derivation:
    """One walk over the fx graph, recording groups and axes; see :func:`spec_from_module`."""

    def __init__(self, model: nn.Module, graph_module: torch.fx.GraphModule):
        self.model = model
        self.graph = graph_module.graph
        self.modules = dict(model.named_modules())
        self.shapes = {name: tuple(t.shape) for name, t in model.state_dict().items()}
        self.axes: Dict[str, List[Optional[Axis]]] = {name: [None] * len(s) for name, s in self.shapes.items()}
        self.sizes: Dict[str, int] = {}
        self.state: Dict[torch.fx.Node, Optional[_Feat]] = {}
        self.called: set = set()

    def fail(self, node: torch.fx.Node, what: str) -> AlignmentError:
        return AlignmentError(
            f"expected only operations that are equivariant under a permutation of hidden units, found {what} at "
            f"{node.op} {node.target!r} ({node.name}); no permutation spec can be derived automatically: write a "
            "PermutationSpec by hand (see resnet_spec)"
        )

    def set_axis(self, name: str, dim: int, feat: Optional[_Feat]) -> None:
        if feat is None:
            return
        if name not in self.axes:
            raise AlignmentError(f"expected tensor {name!r} in the model's state dict, found no such entry")
        self.axes[name][dim] = Axis(feat.group, feat.inner)

    def run(self) -> PermutationSpec:
        for node in self.graph.nodes:
            if node.op == "placeholder":
                self.state[node] = None
            elif node.op == "output":
                dropped = {s.group for n in _nodes_in(node.args) if (s := self.state.get(n)) is not None}
                for ax in self.axes.values():
                    for d, a in enumerate(ax):
                        if a is not None and a.group in dropped:
                            ax[d] = None
                for g in dropped:
                    self.sizes.pop(g, None)
            elif node.op == "get_attr":
                raise self.fail(node, "a parameter or buffer used directly in forward (not through a module)")
            elif node.op == "call_module":
                self.state[node] = self.call_module(node)
            else:
                self.state[node] = self.call_op(node)
        used = {a.group for ax in self.axes.values() for a in ax if a is not None}
        sizes = {g: n for g, n in self.sizes.items() if g in used}
        buffers = frozenset(name for name, _ in self.model.named_buffers())
        axes = {k: tuple(v) for k, v in self.axes.items()}
        return PermutationSpec(group_sizes=sizes, axes=axes, shapes=self.shapes, buffers=buffers)

    def input_state(self, node: torch.fx.Node) -> Optional[_Feat]:
        """The permutation state of the node's tensor inputs; an error if more than one is a tensor and any is
        permuted (an op combining tensors: residual add, concatenation, attention scores)."""
        tensors = [n for n in _nodes_in((node.args, node.kwargs)) if _is_tensor(n)]
        states = [self.state.get(n) for n in tensors]
        if len(tensors) > 1 and any(s is not None for s in states):
            raise self.fail(node, f"an operation on {len(tensors)} tensors (residual add, concatenation, product)")
        return states[0] if states else None

    # --------------------------------------------------------------------------------------------- modules
    def call_module(self, node: torch.fx.Node) -> Optional[_Feat]:
        name = str(node.target)
        mod = self.modules[name]
        supported = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.Flatten)
        if not isinstance(mod, supported + _ELEMENTWISE_MODULES + _POOL_MODULES) and (
            any(True for _ in mod.parameters()) or any(True for _ in mod.buffers())
        ):
            raise self.fail(node, f"a module with parameters that alignment does not support ({type(mod).__name__})")
        feat = self.input_state(node)
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            if name in self.called:
                raise self.fail(node, f"module {name!r} called twice (shared weights)")
            self.called.add(name)
        if isinstance(mod, nn.Linear):
            in_shape = _shape(node.args[0])
            if feat is not None and feat.axis != len(in_shape) - 1:
                raise self.fail(node, f"a Linear layer on a permuted axis {feat.axis} that is not the last")
            self.set_axis(f"{name}.weight", 1, feat)
            return self.new_group(name, mod.out_features, len(_shape(node)) - 1, [f"{name}.weight", f"{name}.bias"])
        if isinstance(mod, (nn.Conv1d, nn.Conv2d)):
            if mod.groups != 1:
                raise self.fail(node, f"a grouped convolution (groups={mod.groups})")
            if feat is not None and feat.axis != 1:
                raise self.fail(node, f"a convolution whose permuted axis {feat.axis} is not the channel axis 1")
            self.set_axis(f"{name}.weight", 1, feat)
            return self.new_group(name, mod.out_channels, 1, [f"{name}.weight", f"{name}.bias"])
        if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
            if feat is not None:
                if feat.axis != 1:
                    raise self.fail(node, f"BatchNorm over axis 1 while the permuted axis is {feat.axis}")
                for t in ("weight", "bias", "running_mean", "running_var"):
                    if f"{name}.{t}" in self.axes:
                        self.set_axis(f"{name}.{t}", 0, feat)
            return feat
        if isinstance(mod, nn.LayerNorm):
            if feat is not None:
                ndim, k = len(_shape(node)), len(mod.normalized_shape)
                if feat.axis >= ndim - k:  # the permuted axis is normalized: its affine parameters are permuted
                    for t in ("weight", "bias"):
                        if f"{name}.{t}" in self.axes:
                            self.set_axis(f"{name}.{t}", feat.axis - (ndim - k), feat)
            return feat
        if isinstance(mod, nn.Flatten):
            return self.reshape(node, feat)
        if isinstance(mod, _ELEMENTWISE_MODULES + _POOL_MODULES):
            return feat
        if feat is not None:
            raise self.fail(node, f"a module whose effect on permuted units is unknown ({type(mod).__name__})")
        return None

    def new_group(self, name: str, size: int, axis: int, tensors: Iterable[str]) -> _Feat:
        feat = _Feat(name, axis)
        self.sizes[name] = size
        for t in tensors:
            if t in self.axes:
                self.set_axis(t, 0, feat)
        return feat

    # -------------------------------------------------------------------------------------- functions, methods
    def call_op(self, node: torch.fx.Node) -> Optional[_Feat]:
        if not _is_tensor(node):  # x.size(0), x.shape: no tensor, nothing permuted
            if any(self.state.get(n) is not None for n in _nodes_in((node.args, node.kwargs))) and node.target not in (
                "size", "dim", getattr
            ):
                raise self.fail(node, "an operation on a permuted tensor that returns something else than a tensor")
            return None
        feat = self.input_state(node)
        if feat is None:
            return None
        target, method = node.target, node.op == "call_method"
        if (method and target in _ELEMENTWISE_METHODS) or (not method and target in _ELEMENTWISE_FUNCTIONS):
            return feat
        if (method and target in _SCALAR_METHODS) or (not method and target in _SCALAR_FUNCTIONS):
            return feat  # input_state already refused a second tensor operand
        if (method and target in _RESHAPE_METHODS) or (not method and target in _RESHAPE_FUNCTIONS):
            return self.reshape(node, feat)
        name = target if method else getattr(target, "__name__", "")
        if name in _REDUCE and (method or getattr(torch, name, None) is target):
            return self.reduce(node, feat)
        if name in ("transpose", "permute") and (method or getattr(torch, name, None) is target):
            ndim = len(_shape(node))
            args = list(node.args[1:])
            if name == "transpose":
                d0, d1 = (a % ndim for a in args[:2])
                order = list(range(ndim))
                order[d0], order[d1] = d1, d0
            else:
                order = [a % ndim for a in (args[0] if len(args) == 1 and isinstance(args[0], (list, tuple)) else args)]
            return _Feat(feat.group, order.index(feat.axis), feat.inner)
        raise self.fail(node, "an operation not known to be equivariant under a permutation of hidden units")

    def reshape(self, node: torch.fx.Node, feat: Optional[_Feat]) -> Optional[_Feat]:
        """A reshape that keeps the dims before the permuted axis and merges it (outermost) with the dims after."""
        if feat is None:
            return None
        src = _shape(node.args[0] if node.args else node.kwargs["input"])
        dst = _shape(node)
        a = feat.axis
        if dst[:a] == src[:a] and len(dst) > a:
            merged = 1
            for k in range(a, len(src)):
                merged *= src[k]
                if merged == dst[a]:
                    return _Feat(feat.group, a, feat.inner * (dst[a] // src[a]))
                if merged > dst[a]:
                    break
        raise self.fail(node, f"a reshape {src} -> {dst} that splits or moves the permuted axis {a}")

    def reduce(self, node: torch.fx.Node, feat: _Feat) -> _Feat:
        src = _shape(node.args[0])
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        if dim is None:
            raise self.fail(node, "a reduction over every axis, the permuted one included")
        dims = {d % len(src) for d in (dim if isinstance(dim, (list, tuple)) else [dim])}
        if feat.axis in dims:
            raise self.fail(node, f"a reduction over the permuted axis {feat.axis}")
        return _Feat(feat.group, feat.axis if keepdim else feat.axis - sum(d < feat.axis for d in dims), feat.inner)


