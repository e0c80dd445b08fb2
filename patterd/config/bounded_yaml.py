"""YAML for the config file, with limits that keep a mistaken or hostile file from freezing or
swelling the daemon.

PyYAML shares the node an ``*alias`` refers to, so composing "a billion laughs" is cheap; the
blow-up comes later, when the tree is walked as if each alias were a copy (``${VAR}``
expansion, validation, rendering): nine levels of nine aliases make 9⁹ strings. So the
composer below counts every node as it would be after expansion — an alias weighs as much as
the node it repeats — and stops as soon as the budget is spent, before anything is built.
It also refuses an alias to a node that contains it (a cycle no walk would finish) and nesting
deeper than a config ever needs (the composer recurses once per level).
"""

from __future__ import annotations

from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner

#: The largest config file read (bytes): a real one is a few kilobytes.
MAX_FILE_BYTES = 1024 * 1024
#: Nodes of the document once every ``*alias`` is expanded (keys, values and items each count).
MAX_NODES = 100_000
#: Nested mappings/lists.
MAX_DEPTH = 64


class YamlLimitError(yaml.YAMLError):
    """The document is over one of the limits; ``problem`` says which, ``problem_mark``
    where."""

    def __init__(self, problem: str, mark: Any = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class BoundedComposer(Composer):
    """PyYAML's composer, enforcing :data:`MAX_NODES` and :data:`MAX_DEPTH` (a mixin: the
    events come from the parser it is combined with)."""

    def init_limits(self, max_nodes: int, max_depth: int) -> None:
        """Set the limits and reset the counts (call after the parser's ``__init__``)."""
        Composer.__init__(self)
        self.max_nodes, self.max_depth = max_nodes, max_depth
        self.expanded = 0                  # nodes composed so far, aliases expanded
        self.aliases = 0
        self._depth = 0
        self._weights: dict[int, int] = {}  # id(node) -> its size once aliases are expanded

    def compose_node(self, parent: Node | None, index: Any) -> Node:  # type: ignore[override]
        """Compose one node (PyYAML's own), then account for its expanded size."""
        if self.check_event(AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._weights:
                raise YamlLimitError(f"the alias *{event.anchor} refers to a node that "
                                     "contains it (a cycle)", event.start_mark)
            node = super().compose_node(parent, index)   # undefined alias: PyYAML's error
            self.aliases += 1
            self._count(self._weights[id(node)], event.start_mark, alias=True)
            return node
        if self._depth >= self.max_depth:
            raise YamlLimitError(f"nested more than {self.max_depth} levels deep",
                                 self.peek_event().start_mark)
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, SequenceNode):
            weight = 1 + sum(self._weights[id(item)] for item in node.value)
        elif isinstance(node, MappingNode):
            weight = 1 + sum(self._weights[id(k)] + self._weights[id(v)]
                             for k, v in node.value)
        else:
            weight = 1
        self._weights[id(node)] = weight
        self._count(1, node.start_mark, alias=False)
        return node

    def _count(self, nodes: int, mark: Any, *, alias: bool) -> None:
        self.expanded += nodes
        if self.expanded > self.max_nodes:
            how = " once its aliases (*name) are expanded" if alias or self.aliases else ""
            raise YamlLimitError(f"the document has more than {self.max_nodes} nodes{how} "
                                 f"(the limit for a config file)", mark)


class PyBoundedLoader(BoundedComposer, Reader, Scanner, Parser, SafeConstructor, Resolver):
    """A safe loader all in Python: PyYAML's parser, the bounded composer and safe
    constructor (where PyYAML was built without libyaml)."""

    def __init__(self, stream: Any, *, max_nodes: int = MAX_NODES,
                 max_depth: int = MAX_DEPTH) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        self.init_limits(max_nodes, max_depth)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)


BoundedLoader: type[BoundedComposer] = PyBoundedLoader

if yaml.__with_libyaml__:
    from yaml.cyaml import CParser

    class CBoundedLoader(BoundedComposer, CParser, SafeConstructor, Resolver):  # type: ignore[misc]
        """A safe loader: libyaml's parser, the bounded composer in Python, PyYAML's safe
        constructor. libyaml scans a 900 kB string in ~8 ms where PyYAML's Python scanner
        takes ~4 s, and a 1 MiB file of 99,000 list items in ~3 s instead of ~29 s."""

        def __init__(self, stream: Any, *, max_nodes: int = MAX_NODES,
                     max_depth: int = MAX_DEPTH) -> None:
            CParser.__init__(self, stream)
            self.init_limits(max_nodes, max_depth)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

    BoundedLoader = CBoundedLoader


def load_yaml(text: str, *, max_nodes: int = MAX_NODES, max_depth: int = MAX_DEPTH,
              loader_class: type[BoundedComposer] | None = None) -> Any:
    """The one document in ``text`` as Python data, within the limits; raises
    :class:`yaml.YAMLError` (:class:`YamlLimitError` for a limit)."""
    loader: Any = (loader_class or BoundedLoader)(text, max_nodes=max_nodes,
                                                  max_depth=max_depth)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NODES", "BoundedComposer", "BoundedLoader",
           "PyBoundedLoader", "YamlLimitError", "load_yaml"]
