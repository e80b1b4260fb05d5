"""Rendering report blocks to markdown and to a self-contained HTML page. A block is a tuple: ("h", level, text),
("p", text), ("list", items), ("table", header, rows), ("img", file, caption) or ("warn", text)."""

from __future__ import annotations

import html


def render_md(blocks: list[tuple]) -> str:
    def one(b: tuple) -> str:
        if b[0] == "table":
            rows = [b[1], ["---"] * len(b[1]), *b[2]]
            return "\n".join("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows)
        return {
            "h": lambda: "#" * b[1] + " " + b[2],
            "p": lambda: b[1],
            "list": lambda: "\n".join(f"- {x}" for x in b[1]),
            "img": lambda: f"![{b[2]}]({b[1]})",
            "warn": lambda: f"> **WARNING:** {b[1]}",
        }[b[0]]()

    return "\n\n".join(one(b) for b in blocks) + "\n"


CSS = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222;"
    "line-height:1.45}"
    "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
    "th,td{border:1px solid #ccc;padding:4px 8px;text-align:left}"
    "th{background:#f2f2f2}tr:nth-child(even) td{background:#fafafa}"
    "img{max-width:100%;border:1px solid #eee;margin:.5em 0}"
    "h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;margin-top:1.6em}"
    ".warn{border:2px solid #c00;background:#fee;color:#900;padding:.5em 1em;font-weight:600}"
)


def render_html(blocks: list[tuple], title: str) -> str:
    e = html.escape

    def one(b: tuple) -> str:
        if b[0] == "table":
            head = "".join(f"<th>{e(str(c))}</th>" for c in b[1])
            body = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        return {
            "h": lambda: f"<h{b[1]}>{e(b[2])}</h{b[1]}>",
            "p": lambda: f"<p>{e(b[1])}</p>",
            "list": lambda: "<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>",
            "img": lambda: f"<figure><img src='{e(b[1])}' alt='{e(b[2])}'><figcaption>{e(b[2])}</figcaption></figure>",
            "warn": lambda: f"<p class='warn'>WARNING: {e(b[1])}</p>",
        }[b[0]]()

    head = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{CSS}</style></head><body>"
    )
    return "\n".join([head, *map(one, blocks)]) + "\n</body></html>\n"
