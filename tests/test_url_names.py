"""A URL name means one URL: with two patterns of one name, ``{% url %}`` quietly picks
one of them (a page's cancel form once posted to the API's cancel action, 415)."""

from __future__ import annotations

from collections import Counter

from django.urls import URLPattern, URLResolver, get_resolver


def names(patterns: list, namespace: str = "") -> list[str]:
    found: list[str] = []
    for entry in patterns:
        if isinstance(entry, URLResolver):
            inner = f"{namespace}{entry.namespace}:" if entry.namespace else namespace
            found += names(entry.url_patterns, inner)
        elif isinstance(entry, URLPattern) and entry.name:
            found.append(namespace + entry.name)
    return found


def test_no_two_urls_share_a_name():
    counts = Counter(names(get_resolver().url_patterns))
    assert [name for name, n in counts.items() if n > 1] == []
