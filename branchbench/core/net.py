"""BranchedNet: the one executor of every :class:`~branchbench.core.plan.Plan`.

Every method (baselines, search methods, plugins) ends in a Plan, and its found
architecture is retrained and evaluated as a ``BranchedNet(plan, backbone,
tasks)``. There is deliberately one executor, so two methods' results differ only
in their plans, never in how a network is built, initialised or run.

Execution walks the blocks level by level. At block ``l`` each *distinct
activation* (a distinct prefix of node ids, :meth:`Plan.activations`) is computed
exactly once per batch: node ``p[-1]`` (or the block's shared shortcut when
``p[-1]`` is ``None``) applied to the activation of ``p[:-1]``. Tasks that share
a prefix share its tensor; a level's activations are dropped as soon as the next
level has been computed. Heads read each task's last activation.

Parameters (one ``state_dict`` layout, whether or not siblings are fused)::

    blocks.<l>.<node>.*   one module per used node id of block l
    shortcuts.<l>.*       only where some task skips block l; shared by its skips
    heads.<task>.*        one head per task

Modules are built in a fixed order (level by level, node ids ascending, then heads
in task order), so a fixed torch seed gives fixed weights.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from branchbench.core.backbones import Backbone, BlockSpec
from branchbench.core.plan import Plan, PlanError, Prefix
from branchbench.core.tasks import TaskSpec

FUSE_MIN_SIBLINGS_CUDA = 8


def fuse_rule(
    backbone: Backbone, device: torch.device | str | None, plan: Plan, level: int
) -> bool:
    """Whether block ``level`` runs its sibling nodes as one batched (vmap) call.

    A fixed rule of (backbone, device, plan), never a timing taken at run time:
    fuse only on CUDA, only fusable (buffer-free MLP) blocks, and only where at
    least ``FUSE_MIN_SIBLINGS_CUDA`` non-skip activations are computed. Measured
    forward+backward, batch 256, MLP 64 -> 4 x 256 (benchmarks/gpu_branchednet.py
    and benchmarks/test_bench_net.py):

    * H100, bf16: fused/plain speed-up 0.58x (shared, 1 node), 0.75x (9 tasks in
      groups of 3: 3 siblings), 1.59x (9 independent), 1.23x (40 tasks, ~14
      siblings), 2.42x (40 independent): fusing pays from about 8 siblings on.
    * CPU (2 cores, fp32): fused was 1.3-1.9x *slower* everywhere (under vmap the
      bias and LayerNorm affine become separate broadcast ops and the weights are
      re-stacked every step), so the CPU never fuses.

    Convolutional blocks hold BatchNorm buffers and are not fusable, so they are
    never fused (grouped convolution was also measured as no faster than a loop at
    64 channels; see DESIGN.md).
    """
    siblings = sum(1 for key in plan.activations(level) if key[-1] is not None)
    return fuses_siblings(backbone.blocks[level], device, siblings)


def fuses_siblings(block: BlockSpec, device: torch.device | str | None, siblings: int) -> bool:
    """The rule of :func:`fuse_rule` for ``siblings`` nodes of one block (also used by supernets)."""
    if device is None or torch.device(device).type != "cuda":
        return False
    return block.fusable and siblings >= FUSE_MIN_SIBLINGS_CUDA


def run_stacked(modules: Sequence[nn.Module], inputs: Tensor, shared_input: bool) -> Tensor:
    """Run same-shaped modules as one vmap over their stacked weights: (G, B, ...) out.

    Weights are stacked with ``torch.stack`` (differentiable, unlike
    ``torch.func.stack_module_state``), so gradients reach each module's own
    parameters; a module may appear more than once. ``inputs`` is one tensor all
    modules take (``shared_input``) or a stack of one input per module.
    """
    template = modules[0]
    names = [name for name, _ in template.named_parameters()]
    per_module = [dict(m.named_parameters()) for m in modules]
    params = {name: torch.stack([p[name] for p in per_module]) for name in names}
    in_dim = None if shared_input else 0
    return vmap(lambda p, inp: functional_call(template, p, (inp,)), in_dims=(0, in_dim))(params, inputs)


def export_state(
    blocks: Mapping[tuple[int, int], nn.Module],
    heads: Mapping[str, nn.Module],
    shortcuts: Mapping[int, nn.Module] | None = None,
) -> dict[str, Tensor]:
    """Weights of separate modules in :class:`BranchedNet`'s ``state_dict`` layout (CPU copies).

    ``blocks`` maps (block, node id) to the module holding that node's weights,
    ``heads`` a task to its head, ``shortcuts`` a block to its shortcut. Search
    supernets use it to hand their weights over for fine-tuning, so the layout
    (see the module docstring) is written in one place.
    """
    state: dict[str, Tensor] = {}

    def put(prefix: str, module: nn.Module) -> None:
        for key, value in module.state_dict().items():
            state[f"{prefix}.{key}"] = value.detach().cpu().clone()

    for (level, node), module in blocks.items():
        put(f"blocks.{level}.{node}", module)
    for level, module in (shortcuts or {}).items():
        put(f"shortcuts.{level}", module)
    for task, module in heads.items():
        put(f"heads.{task}", module)
    return state


class BranchedNet(nn.Module):
    """Executes any Plan over a backbone's blocks and returns ``{task: prediction}``.

    ``fuse=None`` applies :func:`fuse_rule` per block; ``False`` forces the plain
    loop everywhere; ``True`` fuses every fusable block that computes at least one
    non-skip activation. Fused and plain paths agree numerically and share one
    ``state_dict`` layout (see the module docstring).
    """

    def __init__(
        self,
        plan: Plan,
        backbone: Backbone,
        tasks: Sequence[TaskSpec],
        fuse: bool | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        names = [t.name for t in tasks]
        if len(set(names)) != len(names):
            raise PlanError(f"task names repeat in {names}; give each task once")
        plan.check_fits(names, len(backbone.blocks))
        self.plan = plan
        self.backbone = backbone
        self.task_names = names
        self.blocks = nn.ModuleDict()
        self.shortcuts = nn.ModuleDict()
        for level, spec in enumerate(backbone.blocks):
            self.blocks[str(level)] = nn.ModuleDict(
                {str(node): spec.make() for node in plan.nodes_used(level)}
            )
            if plan.has_skip(level):
                self.shortcuts[str(level)] = spec.shortcut()
        self.heads = nn.ModuleDict()
        for task in tasks:
            if "." in task.name or not task.name:
                raise PlanError(f"task name {task.name!r} cannot name a head module; avoid '.'")
            self.heads[task.name] = backbone.make_head(task)
        # per level: the (prefix, tasks) of each distinct activation, in plan order
        self._levels = [list(plan.activations(level).items()) for level in range(plan.n_blocks)]
        self._fused = [self._fuses(level, fuse, device) for level in range(plan.n_blocks)]
        if device is not None:
            self.to(device)

    def _fuses(self, level: int, fuse: bool | None, device: torch.device | str | None) -> bool:
        if fuse is None:
            return fuse_rule(self.backbone, device, self.plan, level)
        if not fuse or not self.backbone.blocks[level].fusable:
            return False
        return any(key[-1] is not None for key, _ in self._levels[level])

    @property
    def fused_levels(self) -> list[bool]:
        """Per block, whether its sibling nodes run as one batched call."""
        return list(self._fused)

    def param_count(self) -> int:
        """All parameters, heads included, counted from the built modules."""
        return sum(p.numel() for p in self.parameters())

    def backbone_param_count(self) -> int:
        """Parameters of the blocks and shortcuts (heads excluded)."""
        return sum(p.numel() for m in (self.blocks, self.shortcuts) for p in m.parameters())

    # --------------------------------------------------------------- execution
    def _walk(self, x: Tensor) -> Iterable[tuple[int, dict[Prefix, Tensor]]]:
        """Yield (level, {prefix: activation}) after each block, computing each once."""
        acts: dict[Prefix, Tensor] = {(): x}
        for level in range(self.plan.n_blocks):
            keys = [key for key, _ in self._levels[level]]
            new: dict[Prefix, Tensor] = {}
            skips = [key for key in keys if key[-1] is None]
            if skips:
                shortcut = self.shortcuts[str(level)]
                for key in skips:
                    new[key] = shortcut(acts[key[:-1]])
            siblings = [key for key in keys if key[-1] is not None]
            if self._fused[level]:
                new.update(self._run_fused(level, siblings, acts))
            else:
                nodes = self.blocks[str(level)]
                for key in siblings:
                    new[key] = nodes[str(key[-1])](acts[key[:-1]])
            acts = {key: new[key] for key in keys}  # plan order; the previous level is freed
            yield level, acts

    def _run_fused(
        self, level: int, keys: list[Prefix], acts: dict[Prefix, Tensor]
    ) -> dict[Prefix, Tensor]:
        """All sibling activations of one block as one :func:`run_stacked` call."""
        nodes = self.blocks[str(level)]
        modules = [nodes[str(key[-1])] for key in keys]
        parents = [key[:-1] for key in keys]
        if all(parent == parents[0] for parent in parents):
            out = run_stacked(modules, acts[parents[0]], shared_input=True)  # no copies
        else:
            out = run_stacked(modules, torch.stack([acts[parent] for parent in parents]), shared_input=False)
        return dict(zip(keys, out.unbind(0), strict=True))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        last = self.plan.n_blocks - 1
        for level, acts in self._walk(x):
            if level == last:
                return {
                    task: self.heads[task](acts[self.plan.prefix(task, last)])
                    for task in self.task_names
                }
        raise AssertionError("unreachable: a plan has at least one block")

    def features(
        self, x: Tensor, levels: Iterable[int] | None = None
    ) -> dict[int, dict[str, Tensor]]:
        """Per-task activations after the given blocks (default: all), without heads.

        Tasks that share an activation get the same tensor.
        """
        wanted = set(range(self.plan.n_blocks) if levels is None else levels)
        bad = sorted(wanted - set(range(self.plan.n_blocks)))
        if bad:
            raise ValueError(
                f"levels {bad} out of range; the backbone has {self.plan.n_blocks} blocks"
            )
        out: dict[int, dict[str, Tensor]] = {}
        for level, acts in self._walk(x):
            if level in wanted:
                out[level] = {t: acts[self.plan.prefix(t, level)] for t in self.task_names}
            if level >= max(wanted, default=-1):
                break
        return out
