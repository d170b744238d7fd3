"""The autograd graph of a tensor as a picture (micrograd's draw_dot): one node per op application with its op,
shape and dtype, the leaves it starts from (parameters by name), and a module's ops collapsible into one box.

    with trace(model) as modules:          # optional: which module applied each op
        loss = loss_fn(model(x), y)
    graph = Graph(loss, model, modules)
    graph.save("graph.svg", collapse=["blocks.0", "blocks.1"])   # matplotlib: .svg, .png or .pdf
    print(graph.to_dot())                                        # Graphviz's DOT text
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable
from weakref import WeakKeyDictionary

from tinygpt.figures import save_figure
from tinygpt.instruments.scopes import ModuleScopes, OpObserver
from tinygpt.module import Module
from tinygpt.tensor import Tensor

COLORS = {"op": "#cfe2f3", "parameter": "#d9ead3", "leaf": "#fff2cc", "constant": "#eeeeee", "module": "#fce5cd"}


class trace(OpObserver):
    """Context manager recording which module of `model` applied each op; it is the mapping Graph reads."""

    def __init__(self, model: Module) -> None:
        self.scopes = ModuleScopes(model)
        self.modules: WeakKeyDictionary = WeakKeyDictionary()

    def __enter__(self) -> WeakKeyDictionary:
        super().__enter__()
        return self.modules

    def forward(self, operation, buffers, kwargs):
        self.modules[operation] = self.scopes.current
        return operation.forward(*buffers, **kwargs)


@dataclass
class Node:
    """A tensor of the graph: made by an op ("op"), a parameter, another leaf that requires grad ("leaf"), a
    constant, or ("module") a collapsed module's ops."""

    key: int
    kind: str
    title: str
    shape: tuple[int, ...] = ()
    dtype: str = ""
    module: str = ""
    inputs: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.title}\n{self.shape} {self.dtype}" if self.kind != "module" else self.title


class Graph:
    """The nodes from `root` back to its leaves. With `model`, parameters are named; with `modules` (from
    `trace`), each op knows its module, so that whole modules can be collapsed into one box."""

    def __init__(self, root: Tensor, model: Module | None = None, modules: WeakKeyDictionary | None = None) -> None:
        names = {id(tensor): name for name, tensor in model.named_parameters()} if model is not None else {}
        modules = modules if modules is not None else {}
        self.nodes: dict[int, Node] = {}
        stack = [root]
        while stack:
            tensor = stack.pop()
            if id(tensor) in self.nodes:
                continue
            node = Node(id(tensor), "constant", "constant", tensor.shape, tensor.dtype.name)
            if tensor.grad_fn is not None:
                if tensor.grad_fn.released:
                    raise RuntimeError("graph: its backward already ran and released it: draw it before backward()")
                operation = tensor.grad_fn.operation
                node.kind, node.title, node.module = "op", tensor.grad_fn.name, modules.get(operation, "")
                inputs = [child for child in tensor.grad_fn.inputs if child is not None]
                node.inputs = [id(child) for child in inputs]
                stack.extend(inputs)
            elif id(tensor) in names:
                node.kind, node.title = "parameter", names[id(tensor)]
            elif tensor.requires_grad:
                node.kind, node.title = "leaf", "leaf"
            self.nodes[node.key] = node
        self.root = id(root)

    def ops(self) -> list[Node]:
        return [node for node in self.nodes.values() if node.kind == "op"]

    def collapsed(self, prefixes: Iterable[str]) -> dict[int, Node]:
        """The nodes with every op of a module named in prefixes (or under it) merged into one box; the parameters
        only its ops use go inside the box."""
        prefixes = list(prefixes)

        def box_of(node: Node) -> str | None:
            return next((prefix for prefix in prefixes if node.kind == "op" and
                         (node.module == prefix or node.module.startswith(prefix + "."))), None)

        boxes = {prefix: Node(-index - 1, "module", prefix) for index, prefix in enumerate(prefixes)}
        target = {key: boxes[box].key if (box := box_of(node)) else key for key, node in self.nodes.items()}
        consumers: dict[int, set[int]] = {}
        for node in self.nodes.values():
            for child in node.inputs:
                consumers.setdefault(child, set()).add(target[node.key])
        for node in self.nodes.values():  # a leaf used only inside one box is drawn inside it
            users = consumers.get(node.key, set())
            if node.kind != "op" and len(users) == 1 and min(users) < 0:
                target[node.key] = min(users)
        result: dict[int, Node] = {}
        counts = {box.key: 0 for box in boxes.values()}
        for key, node in self.nodes.items():
            into = target[key]
            if into != key:
                counts[into] += node.kind == "op"
                continue
            result[key] = Node(key, node.kind, node.title, node.shape, node.dtype, node.module, [])
        for box in boxes.values():
            if counts[box.key]:
                result[box.key] = Node(box.key, "module", f"{box.title}\n{counts[box.key]} ops", module=box.title)
        for key, node in self.nodes.items():
            for child in node.inputs:
                source, sink = target[child], target[key]
                if source != sink and source in result and sink in result and source not in result[sink].inputs:
                    result[sink].inputs.append(source)
        return result

    def to_dot(self, collapse: Iterable[str] = ()) -> str:
        """Graphviz's DOT text of the graph (inputs above, the root at the bottom)."""
        nodes = self.collapsed(collapse)
        lines = ["digraph autograd {", "  node [shape=box, style=\"rounded,filled\", fontname=Helvetica];"]
        for node in nodes.values():
            label = node.label.replace('"', r'\"').replace("\n", r"\n")
            lines.append(f'  n{abs(node.key)}_{node.kind} [label="{label}", fillcolor="{COLORS[node.kind]}"];')
        for node in nodes.values():
            lines += [f"  n{abs(child)}_{nodes[child].kind} -> n{abs(node.key)}_{node.kind};" for child in node.inputs]
        return "\n".join(lines + ["}"])

    def save(self, path: str | Path, collapse: Iterable[str] = ()) -> Path:
        """Draw the graph with matplotlib (no Graphviz needed): layers from the leaves (top) to the root (bottom)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        nodes = self.collapsed(collapse)
        positions = layout(nodes)
        columns = max(x for x, _ in positions.values()) + 1
        rows = max(y for _, y in positions.values()) + 1
        figure = Figure(figsize=(max(4.0, 2.3 * columns), max(3.0, 0.75 * rows)))
        FigureCanvasAgg(figure)
        axes = figure.add_axes((0, 0, 1, 1))
        axes.set_xlim(-0.6, columns - 0.4)
        axes.set_ylim(rows - 0.5, -0.5)
        axes.axis("off")
        for node in nodes.values():
            x, y = positions[node.key]
            for child in node.inputs:
                cx, cy = positions[child]
                axes.annotate("", (x, y - 0.2), (cx, cy + 0.2), arrowprops=dict(arrowstyle="->", color="#777777", lw=0.7))
        for node in nodes.values():
            x, y = positions[node.key]
            axes.text(x, y, node.label, ha="center", va="center", fontsize=7,
                      bbox=dict(boxstyle="round,pad=0.3", facecolor=COLORS[node.kind], edgecolor="#555555", lw=0.6))
        return save_figure(figure, path)


def layout(nodes: dict[int, Node]) -> dict[int, tuple[float, int]]:
    """(column, row) of each node: row = the longest path from a leaf, so every input sits above its consumers;
    within a row, nodes are ordered by the mean column of their inputs (one barycentre pass)."""
    rows: dict[int, int] = {}

    def row_of(key: int) -> int:
        stack = [key]
        while stack:
            current = stack[-1]
            pending = [child for child in nodes[current].inputs if child not in rows]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            rows[current] = 1 + max((rows[child] for child in nodes[current].inputs), default=-1)
        return rows[key]

    for key in nodes:
        row_of(key)
    first_use: dict[int, int] = {}
    for node in nodes.values():
        for child in node.inputs:
            first_use[child] = min(first_use.get(child, rows[node.key]), rows[node.key])
    for key, node in nodes.items():  # a leaf sits just above its first consumer
        if not node.inputs and key in first_use:
            rows[key] = first_use[key] - 1
    low = min(rows.values())
    by_row: dict[int, list[int]] = {}
    for key, row in rows.items():
        by_row.setdefault(row - low, []).append(key)
    width = max(len(keys) for keys in by_row.values())
    positions: dict[int, tuple[float, int]] = {}
    for row in sorted(by_row):
        def mean_column(key: int) -> float:
            columns = [positions[child][0] for child in nodes[key].inputs if child in positions]
            return sum(columns) / len(columns) if columns else width / 2
        ordered = sorted(by_row[row], key=mean_column)
        offset = (width - len(ordered)) / 2
        positions.update({key: (offset + column, row) for column, key in enumerate(ordered)})
    return positions


__all__ = ["Graph", "Node", "trace", "layout"]
