#!/usr/bin/env python3
"""Reference renderer for the frozen expectations in tests/test_jinja*.cpp.

Renders templates with python jinja2 set up exactly as Hugging Face transformers does for chat
templates (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, loopcontrols, its tojson,
raise_exception, strftime_now). Reads JSONL {"template": str, "context": {...}} on stdin and writes
JSONL {"out": str} or {"error": str}:

    echo '{"template": "{{ x | tojson }}", "context": {"x": [1, "é"]}}' | python3 tests/jinja_hf_reference.py
"""
import copy
import json
import sys
from datetime import datetime

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment


def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)


def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt):
    return datetime.now().strftime(fmt)


ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
ENV.filters["tojson"] = tojson
ENV.globals["raise_exception"] = raise_exception
ENV.globals["strftime_now"] = strftime_now


def render(template, context):
    try:
        return {"out": ENV.from_string(template).render(**copy.deepcopy(context))}
    except Exception as e:  # noqa: BLE001 - report any failure as the reference's error
        return {"error": f"{type(e).__name__}: {e}"}


if __name__ == "__main__":
    for line in sys.stdin:
        if line.strip():
            case = json.loads(line)
            print(json.dumps(render(case["template"], case.get("context", {})), ensure_ascii=False))
