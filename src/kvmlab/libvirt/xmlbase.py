"""The XML mapper core: typed descriptors over the stdlib ElementTree.

The idea is virt-manager's ``virtinst/xmlbuilder.py``: an :class:`XMLObject` wraps one XML
element, and each value kvmlab cares about is one descriptor naming one XPath relative to it
(``./memory``, ``./memory/@unit``, ``./os/type/@arch``) with a typed converter. Reading a
descriptor looks the path up; setting it creates the missing elements, placing each new
element where libvirt's canonical order (the class's ``_ORDER``) says; setting ``None``
removes it again. A parsed document is edited in place, so elements and attributes kvmlab
does not know (``<seclabel>``, ``<address>``, other applications' metadata) survive a
parse -> edit -> :meth:`XMLObject.to_xml` round trip.

Only ``xml.etree.ElementTree`` is used so that importing the mapper stays cheap. The
serializer is kvmlab's own (about forty lines) because ElementTree's namespace prefixes are
process-global: this one keeps the prefixes a parsed document used (``kvmlab:``, another
application's ``libosinfo:``) and writes libvirt's style (two-space indent, single quotes).
"""

from __future__ import annotations

import copy
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, ClassVar, Generic, TypeVar, overload

from kvmlab.errors import InvalidInput

T = TypeVar("T")
X = TypeVar("X", bound="XMLObject")

XML_NS = "http://www.w3.org/XML/1998/namespace"

_Steps = tuple[str, ...]


class Converter(Generic[T]):
    """A named pair of functions turning XML text into a Python value and back."""

    def __init__(self, name: str, parse: Callable[[str], T], fmt: Callable[[T], str]) -> None:
        self.name = name
        self.parse = parse
        self.format = fmt

    def __repr__(self) -> str:
        return f"Converter({self.name})"


def _parse_bool(text: str) -> bool:
    return text.strip().lower() in ("yes", "on", "true", "1")


def _format_int(value: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an int, got {value!r}")
    return str(value)


STR: Converter[str] = Converter("str", str, str)
INT: Converter[int] = Converter("int", lambda s: int(s.strip()), _format_int)
YES_NO: Converter[bool] = Converter("yes/no", _parse_bool, lambda v: "yes" if v else "no")
ON_OFF: Converter[bool] = Converter("on/off", _parse_bool, lambda v: "on" if v else "off")

_BY_TYPE: dict[type, Converter[Any]] = {str: STR, int: INT, bool: YES_NO}

_UNIT_FACTORS = {
    "b": 1, "bytes": 1,
    "kb": 1000, "k": 1024, "kib": 1024,
    "mb": 1000**2, "m": 1024**2, "mib": 1024**2,
    "gb": 1000**3, "g": 1024**3, "gib": 1024**3,
    "tb": 1000**4, "t": 1024**4, "tib": 1024**4,
    "pb": 1000**5, "p": 1024**5, "pib": 1024**5,
}  # fmt: skip


def scale_to_bytes(value: int | None, unit: str | None, default_unit: str = "bytes") -> int | None:
    """Turn a libvirt ``value`` + ``unit`` pair (``unit='KiB'``, ``'G'``, ...) into bytes."""
    if value is None:
        return None
    factor = _UNIT_FACTORS.get((unit or default_unit).lower())
    if factor is None:
        raise ValueError(f"unknown libvirt unit {unit!r}")
    return value * factor


def _qualify(name: str, ns: dict[str, str]) -> str:
    """``kvmlab:image`` -> ``{https://...}image`` using the prefix map ``ns``."""
    if ":" not in name:
        return name
    prefix, local = name.split(":", 1)
    if prefix == "xml":
        return f"{{{XML_NS}}}{local}"
    return f"{{{ns[prefix]}}}{local}"


def _compile(xpath: str, ns: dict[str, str]) -> tuple[_Steps, str | None]:
    """Split ``./a/b/@c`` into element steps ``(a, b)`` and attribute ``c`` (or ``None``)."""
    path = xpath[2:] if xpath.startswith("./") else xpath.lstrip(".")
    parts = [p for p in path.split("/") if p]
    attr = None
    if parts and parts[-1].startswith("@"):
        attr = _qualify(parts.pop()[1:], ns)
    if any(not p.replace(":", "").replace("_", "").replace("-", "").isalnum() for p in parts):
        raise ValueError(f"unsupported XPath {xpath!r}: only ./a/b/@c paths are mapped")
    return tuple(_qualify(p, ns) for p in parts), attr


class XMLObject:
    """One XML element (a whole document or a part of one) with typed, mapped properties.

    ``XMLObject()`` starts a fresh element; ``XMLObject(xml_string)`` parses a document;
    ``XMLObject(element)`` wraps an element of a larger tree, sharing it (edits are visible
    in the parent document). Subclasses set ``_TAG`` (the root tag, may be ``prefix:tag``),
    ``_NS`` (prefix -> namespace URI for their XPaths) and ``_ORDER`` (child paths relative
    to the root, e.g. ``"os"``, ``"os/type"``, ``"devices/disk"``, in libvirt's order).
    """

    _TAG: ClassVar[str] = ""
    _NS: ClassVar[dict[str, str]] = {}
    _ORDER: ClassVar[Sequence[str]] = ()
    _order_cache: ClassVar[dict[_Steps, int] | None] = None

    def __init__(self, xml: str | ET.Element | None = None) -> None:
        self._prefixes: dict[str, str] = {}
        tag = _qualify(self._TAG, self._NS)
        if xml is None:
            elem = ET.Element(tag)
        elif isinstance(xml, str):
            elem, self._prefixes = _parse(xml)
        else:
            elem = xml
        if elem.tag != tag:
            raise InvalidInput(f"expected a <{self._TAG}> XML document, got <{elem.tag}>")
        self._elem = elem

    @classmethod
    def from_xml(cls: type[X], xml: str) -> X:
        """Parse an XML document (raises :class:`InvalidInput` if it is not one of ours)."""
        return cls(xml)

    @property
    def element(self) -> ET.Element:
        """The wrapped ElementTree element (shared, not a copy)."""
        return self._elem

    def to_xml(self) -> str:
        """The element as pretty-printed XML text, in libvirt's style."""
        prefixes = {uri: p for p, uri in self._NS.items()}
        prefixes.update(self._prefixes)
        return element_to_xml(self._elem, prefixes)

    def copy(self: X) -> X:
        """A deep, detached copy of this object."""
        new = type(self)(copy.deepcopy(self._elem))
        new._prefixes = dict(self._prefixes)
        return new

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._elem.tag}>"

    # -- path helpers used by the descriptors --------------------------------------------

    @classmethod
    def _order(cls) -> dict[_Steps, int]:
        cached = cls.__dict__.get("_order_cache")
        if cached is None:
            cached = {_compile(p, cls._NS)[0]: i for i, p in enumerate(cls._ORDER)}
            cls._order_cache = cached
        return cached

    def _chain(self, steps: _Steps) -> list[ET.Element] | None:
        """The elements along ``steps`` (first match at each step), or None if one is missing."""
        chain = [self._elem]
        for step in steps:
            child = next((c for c in chain[-1] if c.tag == step), None)
            if child is None:
                return None
            chain.append(child)
        return chain

    def _find(self, steps: _Steps) -> ET.Element | None:
        chain = self._chain(steps)
        return chain[-1] if chain else None

    def _ensure(self, steps: _Steps) -> ET.Element:
        """Find or create the element at ``steps``, creating missing ones in canonical order."""
        elem = self._elem
        for depth, step in enumerate(steps):
            child = next((c for c in elem if c.tag == step), None)
            if child is None:
                child = ET.Element(step)
                self._insert(elem, steps[:depth], child)
            elem = child
        return elem

    def _insert(self, parent: ET.Element, parent_steps: _Steps, child: ET.Element) -> None:
        """Insert ``child`` after the last sibling that comes before it in ``_ORDER``."""
        order = self._order()
        key = order.get((*parent_steps, child.tag))
        if key is None:
            parent.append(child)
            return
        after: int | None = None
        before: int | None = None
        for i, sibling in enumerate(parent):
            k = order.get((*parent_steps, sibling.tag))
            if k is None:
                continue
            if k <= key:
                after = i
            elif before is None:
                before = i
        index = after + 1 if after is not None else before if before is not None else len(parent)
        parent.insert(index, child)

    def _prune(self, chain: list[ET.Element]) -> None:
        """Remove elements of ``chain`` (not the root) left with no content, innermost first."""
        for depth in range(len(chain) - 1, 0, -1):
            elem = chain[depth]
            if len(elem) or elem.attrib or (elem.text or "").strip():
                return
            chain[depth - 1].remove(elem)


def element_to_xml(elem: ET.Element, prefixes: dict[str, str] | None = None) -> str:
    """Any element as pretty-printed XML; ``prefixes`` maps namespace URIs to prefixes."""
    return _Serializer(prefixes or {}).serialize(elem)


def with_namespace(elem: ET.Element, uri: str | None) -> ET.Element:
    """A deep copy of ``elem`` with its element tags moved into namespace ``uri`` (or none).

    ``virDomainGetMetadata(VIR_DOMAIN_METADATA_ELEMENT)`` returns an application's element
    with its namespace stripped, and ``virDomainSetMetadata`` wants it that way too (it adds
    the namespace given as an argument); this converts between that and the namespaced form.
    """
    new = copy.deepcopy(elem)
    for node in new.iter():
        if isinstance(node.tag, str):
            local = node.tag.rsplit("}", 1)[-1]
            node.tag = f"{{{uri}}}{local}" if uri else local
    return new


_XMLNS_RE = re.compile(r"""xmlns:([A-Za-z_][\w.-]*)\s*=\s*(?:'([^']*)'|"([^"]*)")""")


def _parse(xml: str) -> tuple[ET.Element, dict[str, str]]:
    """Parse ``xml``, also returning the namespace prefixes it declared (uri -> prefix).

    ``ET.fromstring`` is about three times faster than a pull parser reporting ``start-ns``
    events, and ``kvmlab ls`` parses every domain; the declared prefixes are read from the
    text instead (only ``to_xml`` needs them).
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise InvalidInput(f"not valid XML: {e}") from e
    prefixes: dict[str, str] = {}
    if "xmlns:" in xml:
        for m in _XMLNS_RE.finditer(xml):
            prefixes.setdefault(m.group(2) if m.group(2) is not None else m.group(3), m.group(1))
    return root, prefixes


class XMLProperty(Generic[T]):
    """One value at one XPath: an attribute (``./a/@b``) or an element's text (``./a``).

    ``type`` is ``str`` (default), ``int``, ``bool`` (written ``yes``/``no``) or a
    :class:`Converter` such as :data:`ON_OFF`. Reading a missing node gives ``default``;
    setting ``None`` removes the node (and parents it leaves empty).
    """

    @overload
    def __init__(
        self: XMLProperty[str], xpath: str, type: type[str] = ..., *, default: str | None = None
    ) -> None: ...
    @overload
    def __init__(
        self: XMLProperty[bool], xpath: str, type: type[bool], *, default: bool | None = None
    ) -> None: ...
    @overload
    def __init__(
        self: XMLProperty[int], xpath: str, type: type[int], *, default: int | None = None
    ) -> None: ...
    @overload
    def __init__(
        self: XMLProperty[T], xpath: str, type: Converter[T], *, default: T | None = None
    ) -> None: ...
    def __init__(self, xpath: str, type: Any = str, *, default: Any = None) -> None:
        self.xpath = xpath
        self.conv: Converter[T] = type if isinstance(type, Converter) else _BY_TYPE[type]
        self.default: T | None = default
        self._steps: _Steps = ()
        self._attr: str | None = None

    def __set_name__(self, owner: type[XMLObject], name: str) -> None:
        self.name = name
        self._steps, self._attr = _compile(self.xpath, owner._NS)

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> XMLProperty[T]: ...
    @overload
    def __get__(self, obj: XMLObject, owner: type[Any]) -> T | None: ...
    def __get__(self, obj: XMLObject | None, owner: type[Any]) -> XMLProperty[T] | T | None:
        if obj is None:
            return self
        elem = obj._find(self._steps)
        if elem is None:
            return self.default
        raw = elem.get(self._attr) if self._attr else elem.text
        if raw is None or (not raw.strip() and self.conv is not STR):
            return self.default
        try:
            return self.conv.parse(raw)
        except ValueError as e:
            raise InvalidInput(f"{self.xpath} has {raw!r}, not a {self.conv.name} value") from e

    def __set__(self, obj: XMLObject, value: T | None) -> None:
        if value is None:
            chain = obj._chain(self._steps)
            if chain is None:
                return
            if self._attr:
                chain[-1].attrib.pop(self._attr, None)
            elif len(chain) > 1:
                chain[-2].remove(chain[-1])
                chain.pop()
            else:
                chain[-1].text = None
            obj._prune(chain)
            return
        text = self.conv.format(value)
        elem = obj._ensure(self._steps)
        if self._attr:
            elem.set(self._attr, text)
        else:
            elem.text = text


class XMLFlag:
    """An element whose presence is the value: ``<features><acpi/></features>`` -> True."""

    def __init__(self, xpath: str) -> None:
        self.xpath = xpath
        self._steps: _Steps = ()

    def __set_name__(self, owner: type[XMLObject], name: str) -> None:
        self._steps, attr = _compile(self.xpath, owner._NS)
        if attr or not self._steps:
            raise ValueError(f"XMLFlag needs an element path, not {self.xpath!r}")

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> XMLFlag: ...
    @overload
    def __get__(self, obj: XMLObject, owner: type[Any]) -> bool: ...
    def __get__(self, obj: XMLObject | None, owner: type[Any]) -> XMLFlag | bool:
        if obj is None:
            return self
        return obj._find(self._steps) is not None

    def __set__(self, obj: XMLObject, value: bool) -> None:
        if value:
            obj._ensure(self._steps)
            return
        chain = obj._chain(self._steps)
        if chain is not None:
            chain[-2].remove(chain[-1])
            obj._prune(chain[:-1])


class ChildList(Sequence[X]):
    """A live view of the child elements at one XPath, wrapped as ``cls`` objects."""

    def __init__(self, owner: XMLObject, steps: _Steps, cls: type[X]) -> None:
        self._owner = owner
        self._steps = steps
        self._cls = cls

    def _elements(self) -> list[ET.Element]:
        parent = self._owner._find(self._steps[:-1])
        if parent is None:
            return []
        return [c for c in parent if c.tag == self._steps[-1]]

    def _wrap(self, elem: ET.Element) -> X:
        child = self._cls(elem)
        child._prefixes = self._owner._prefixes
        return child

    @overload
    def __getitem__(self, index: int) -> X: ...
    @overload
    def __getitem__(self, index: slice) -> list[X]: ...
    def __getitem__(self, index: int | slice) -> X | list[X]:
        elems = self._elements()
        if isinstance(index, slice):
            return [self._wrap(e) for e in elems[index]]
        return self._wrap(elems[index])

    def __len__(self) -> int:
        return len(self._elements())

    def __iter__(self) -> Iterator[X]:
        return iter([self._wrap(e) for e in self._elements()])

    def add(self, child: X) -> X:
        """Append ``child`` after the last of its kind (in canonical order) and return it."""
        parent_steps = self._steps[:-1]
        parent = self._owner._ensure(parent_steps)
        self._owner._insert(parent, parent_steps, child.element)
        return child

    def remove(self, child: X) -> None:
        """Remove ``child`` (an object returned by this list or passed to :meth:`add`)."""
        chain = self._owner._chain(self._steps[:-1])
        if chain is None or not any(e is child.element for e in chain[-1]):
            raise ValueError(f"{child!r} is not in this list")
        chain[-1].remove(child.element)
        self._owner._prune(chain)

    def clear(self) -> None:
        """Remove every child of this list."""
        for child in list(self):
            self.remove(child)

    def __repr__(self) -> str:
        return f"ChildList({list(self)!r})"


class XMLChildren(Generic[X]):
    """A list of child objects at one XPath (``./devices/disk`` -> ``ChildList[DiskXML]``).

    Assigning an iterable replaces all of them.
    """

    def __init__(self, xpath: str, cls: type[X]) -> None:
        self.xpath = xpath
        self.cls = cls
        self._steps: _Steps = ()

    def __set_name__(self, owner: type[XMLObject], name: str) -> None:
        self._steps, attr = _compile(self.xpath, owner._NS)
        if attr or not self._steps or self._steps[-1] != _qualify(self.cls._TAG, self.cls._NS):
            raise ValueError(f"{self.xpath!r} does not name <{self.cls._TAG}> elements")

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> XMLChildren[X]: ...
    @overload
    def __get__(self, obj: XMLObject, owner: type[Any]) -> ChildList[X]: ...
    def __get__(self, obj: XMLObject | None, owner: type[Any]) -> XMLChildren[X] | ChildList[X]:
        if obj is None:
            return self
        return ChildList(obj, self._steps, self.cls)

    def __set__(self, obj: XMLObject, value: Iterable[X]) -> None:
        children = list(value)
        view = ChildList(obj, self._steps, self.cls)
        view.clear()
        for child in children:
            view.add(child)


class XMLChild(Generic[X]):
    """One optional child object at one XPath; reads ``None`` when absent.

    Assigning an object puts its element in place of the current one; ``None`` removes it.
    """

    def __init__(self, xpath: str, cls: type[X]) -> None:
        self.xpath = xpath
        self.cls = cls
        self._list = XMLChildren(xpath, cls)

    def __set_name__(self, owner: type[XMLObject], name: str) -> None:
        self._list.__set_name__(owner, name)

    @overload
    def __get__(self, obj: None, owner: type[Any]) -> XMLChild[X]: ...
    @overload
    def __get__(self, obj: XMLObject, owner: type[Any]) -> X | None: ...
    def __get__(self, obj: XMLObject | None, owner: type[Any]) -> XMLChild[X] | X | None:
        if obj is None:
            return self
        view = self._list.__get__(obj, owner)
        return view[0] if len(view) else None

    def __set__(self, obj: XMLObject, value: X | None) -> None:
        self._list.__set__(obj, [] if value is None else [value])


_TEXT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_ATTR_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", "'": "&apos;", "\n": "&#10;", "\r": "&#13;",
     "\t": "&#9;"}
)  # fmt: skip


def _escape_text(text: str) -> str:
    return text.translate(_TEXT_ESCAPES)


def _escape_attr(text: str) -> str:
    return text.translate(_ATTR_ESCAPES)


class _Serializer:
    """Writes an element tree as libvirt does: 2-space indent, single-quoted attributes."""

    def __init__(self, preferred: dict[str, str]) -> None:
        self.preferred = preferred
        self.assigned: dict[str, str] = {XML_NS: "xml"}
        self.out: list[str] = []

    def serialize(self, root: ET.Element) -> str:
        self._write(root, 0, {XML_NS})
        return "".join(self.out) + "\n"

    def _prefix(self, uri: str) -> str:
        if uri not in self.assigned:
            taken = set(self.assigned.values())
            prefix = self.preferred.get(uri) or "ns0"
            base, n = prefix, 0
            while prefix in taken:
                n += 1
                prefix = f"{base}{n}"
            self.assigned[uri] = prefix
        return self.assigned[uri]

    def _name(self, name: str, scope: set[str], new: list[str]) -> str:
        if not name.startswith("{"):
            return name
        uri, local = name[1:].split("}", 1)
        if uri not in scope and uri not in new:
            new.append(uri)
        return f"{self._prefix(uri)}:{local}"

    def _write(self, elem: ET.Element, depth: int, scope: set[str]) -> None:
        indent = "  " * depth
        if not isinstance(elem.tag, str):  # a comment or processing instruction
            self.out.append(f"{indent}<!--{elem.text or ''}-->")
            return
        new: list[str] = []
        tag = self._name(elem.tag, scope, new)
        attrs = [(self._name(k, scope, new), v) for k, v in elem.attrib.items()]
        decls = [(f"xmlns:{self._prefix(uri)}", uri) for uri in new]
        self.out.append(f"{indent}<{tag}")
        self.out.extend(f" {k}='{_escape_attr(v)}'" for k, v in decls + attrs)
        text = elem.text if elem.text and elem.text.strip() else ""
        if not len(elem):
            self.out.append(f">{_escape_text(text)}</{tag}>" if text else "/>")
            return
        self.out.append(">" + _escape_text(text))
        inner = scope | set(new)
        for child in elem:
            self.out.append("\n")
            self._write(child, depth + 1, inner)
            if child.tail and child.tail.strip():
                self.out.append(_escape_text(child.tail))
        self.out.append(f"\n{indent}</{tag}>")
