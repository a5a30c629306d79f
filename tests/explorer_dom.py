#!/usr/bin/python3
"""Checks the DOM of an explorer page (scripts/explore.sh, as Chromium's --dump-dom prints it)
against references that do not come from the page: ./run's own output.

  explorer_dom.py page DOM FRAGMENT PROMPT MODEL...   the page of these models, opened at FRAGMENT
  explorer_dom.py mock OUT.json                       write a made-up dump with queries and keys
  explorer_dom.py page-mock DOM FRAGMENT MOCK.json PROMPT   the page of that dump
  explorer_dom.py harness DOM                         the results of tests/explorer_harness.html
  explorer_dom.py refused DOM MESSAGE                 a page that refused its data: MESSAGE in
                                                      #errors (after any syntax error), nothing drawn

For each model of the page, `page` checks:
- the token labels on both axes against `./run MODEL -p PROMPT --attn-dump`;
- the kv-head group labels against n_heads and n_kv_heads from `./run MODEL --info`;
- every cell of the selected head against the table `./run MODEL -p PROMPT --attn L:H` prints
  (%6.2f; "·" where masked);
- where the dump has "queries" and "keys", the hand calculation: q·k and q·k/sqrt(head_dim)
  computed here from those vectors, and the softmax of the page's scaled scores and its shares
  against the dump's weights (1e-4).
Prints each difference and exits 1 if there is any.
"""
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
from html.parser import HTMLParser

RUN = os.environ.get("RUN_BINARY", "./run")
VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
        "track", "wbr"}
TOLERANCE = 1e-4
problems = []


def problem(message):
    problems.append(message)


# ---------------------------------------------------------------------------------------------
# A small DOM built from the dumped HTML


class Node:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent, self.children = tag, dict(attrs), parent, []

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def classes(self):
        return self.attrs.get("class", "").split()

    def find_all(self, tag=None, cls=None, **attrs):
        found = []
        for child in self.children:
            if isinstance(child, str):
                continue
            if ((tag is None or child.tag == tag) and (cls is None or cls in child.classes())
                    and all(child.attrs.get(k.replace("_", "-")) == v for k, v in attrs.items())):
                found.append(child)
            found.extend(child.find_all(tag, cls, **attrs))
        return found

    def find(self, tag=None, cls=None, **attrs):
        found = self.find_all(tag, cls, **attrs)
        return found[0] if found else None


class Builder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {}, None)
        self.current = self.root

    def handle_starttag(self, tag, attrs):
        node = Node(tag, [(k, v if v is not None else "") for k, v in attrs], self.current)
        self.current.children.append(node)
        if tag not in VOID:
            self.current = node

    def handle_endtag(self, tag):
        node = self.current
        while node is not self.root and node.tag != tag:
            node = node.parent
        if node is not self.root:
            self.current = node.parent

    def handle_data(self, data):
        self.current.children.append(data)


def load_dom(path):
    builder = Builder()
    with open(path, encoding="utf-8") as f:
        builder.feed(f.read())
    return builder.root


# ---------------------------------------------------------------------------------------------
# References from ./run


def run(*args):
    result = subprocess.run([RUN, *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"explorer_dom: {RUN} {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def info(model):
    fields = dict(line.split(None, 1) for line in run(model, "--info").splitlines() if line.strip())
    return int(fields["n_heads"]), int(fields["n_kv_heads"])


def attention_dump(model, prompt):
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "dump.json")
        run(model, "-p", prompt, "--attn-dump", path)
        with open(path, encoding="utf-8") as f:
            return json.load(f)


def attention_table(model, prompt, layer, head, n):
    """The rows of `--attn L:H`'s table: n strings each, "·" where masked."""
    rows = []
    for line in run(model, "-p", prompt, "--attn", f"{layer}:{head}").splitlines()[2:]:
        if re.match(r"^\s*\d+ ", line):
            rows.append(line.split()[-n:])
    if len(rows) != n:
        sys.exit(f"explorer_dom: expected {n} rows from --attn {layer}:{head}, read {len(rows)}")
    return rows


def group_labels(n_heads, n_kv_heads):
    size = n_heads // n_kv_heads
    labels = []
    for kv in range(n_kv_heads):
        first, last = kv * size, kv * size + size - 1
        labels.append(f"kv head {kv}: query head {first}" if size == 1 else
                      f"kv head {kv}: query heads {first}–{last}")
    return labels


# ---------------------------------------------------------------------------------------------
# Checks


def parse_fragment(fragment):
    state = {}
    for part in fragment.lstrip("#").split("&"):
        name, _, value = part.partition("=")
        if value.isdigit():
            state[name] = int(value)
    return state


def check_common(dom, fragment, prompt, n_models):
    shown_prompt = dom.find(id="prompt")
    shown_prompt = shown_prompt.find("q") if shown_prompt else None
    if shown_prompt is None or shown_prompt.text() != prompt:
        problem(f"prompt shown as {shown_prompt.text() if shown_prompt else None!r}, "
                f"expected {prompt!r}")
    errors = dom.find(id="errors")
    if errors is None:
        problem("no #errors element")
    elif errors.text().strip():
        problem(f"script errors on the page: {errors.text().strip()}")
    status = dom.find(id="status")
    if status is None:
        problem("no #status element")
        return {}
    wanted = parse_fragment(fragment)
    shown = {name: int(status.attrs.get(f"data-{name}", "-1"))
             for name in ("model", "layer", "head", "query", "key")}
    for name, value in wanted.items():
        if shown.get(name) != value:
            problem(f"#status data-{name} is {shown.get(name)}, the fragment says {value}")
    if len(dom.find_all("table", cls="heatmap")) != n_models:
        problem(f"expected {n_models} heatmaps side by side, found "
                f"{len(dom.find_all('table', cls='heatmap'))}")
    return shown


def check_labels(table, labels, where):
    for axis, tag_class in (("key", "key"), ("query", "query")):
        shown = [th.find("span", cls="tok").text() for th in table.find_all("th", cls=tag_class)]
        if shown != labels:
            problem(f"{where}: {axis} labels {shown}, expected {labels}")


def check_weights(table, rows, where):
    for q, row in enumerate(rows):
        for k, expected in enumerate(row):
            cell = table.find("td", data_query=str(q), data_key=str(k))
            if cell is None:
                problem(f"{where}: no cell query {q} key {k}")
                continue
            if expected == "·":
                if "masked" not in cell.classes() or cell.text() != "·" or "data-weight" in cell.attrs:
                    problem(f"{where}: cell ({q}, {k}) should be masked, shows {cell.text()!r}")
                continue
            weight = cell.attrs.get("data-weight")
            if weight == expected and cell.text() == expected:
                continue
            # A weight on a rounding tie may print either way; its exact value must sit there.
            exact = float(cell.attrs.get("data-exact", "nan"))
            tie = (weight is not None and abs(float(weight) - float(expected)) < 0.0101
                   and abs(exact - float(expected)) <= 0.005 + 1e-5)
            if not tie or cell.text() != weight:
                problem(f"{where}: cell ({q}, {k}) shows {cell.text()!r} (data-weight {weight}), "
                        f"./run --attn prints {expected}")


def check_hand_calculation(dom, index, dump, layer, head, where):
    """Only for dumps that carry "queries" and "keys" (the caller checks)."""
    box = dom.find("div", cls="explain", data_model=str(index))
    if box is None:
        problem(f"{where}: no hand calculation")
        return
    query = int(box.attrs.get("data-query", "-1"))
    rows = [r for r in box.find_all("tr") if "data-key" in r.attrs]
    if len(rows) != query + 1:
        problem(f"{where}: hand calculation has {len(rows)} rows for query {query}")
        return
    group_size = dump["n_heads"] // dump["n_kv_heads"]
    q = dump["queries"][layer][head][query]
    keys = dump["keys"][layer][head // group_size]
    weights = dump["attention"][layer][head][query]
    scaled = [float(r.attrs["data-scaled"]) for r in rows]
    top = max(scaled)
    total = sum(math.exp(s - top) for s in scaled)
    for key, row in enumerate(rows):
        score = sum(a * b for a, b in zip(q, keys[key]))
        reference = {"data-score": score, "data-scaled": score / math.sqrt(len(q)),
                     "data-share": weights[key]}
        for name, value in reference.items():
            got = float(row.attrs[name])
            if abs(got - value) > TOLERANCE * max(1.0, abs(value)):
                problem(f"{where}: query {query} key {key}: {name} {got}, expected {value}")
        softmax = math.exp(scaled[key] - top) / total
        if abs(softmax - weights[key]) > TOLERANCE:
            problem(f"{where}: query {query} key {key}: softmax of the shown scaled scores is "
                    f"{softmax:.6f}, the dump's weight {weights[key]:.6f}")


def check_page(dom_path, fragment, prompt, models):
    dom = load_dom(dom_path)
    shown = check_common(dom, fragment, prompt, len(models))
    layer, head = shown.get("layer", 0), shown.get("head", 0)
    for index, model in enumerate(models):
        where = f"{model} (layer {layer}, head {head})"
        dump = attention_dump(model, prompt)
        labels = dump["labels"]
        n_heads, n_kv_heads = info(model)
        expected_groups = group_labels(n_heads, n_kv_heads)
        card = next((c for c in dom.find_all("div", cls="card", data_model=str(index))
                     if c.find("ul", cls="groups")), None)
        groups = [li.text() for li in card.find_all("li", cls="group")] if card else []
        if groups != expected_groups:
            problem(f"{model}: kv-head groups {groups}, expected {expected_groups}")
        table = dom.find("table", cls="heatmap", data_model=str(index))
        if table is None:
            problem(f"{where}: no heatmap")
            continue
        if (table.attrs.get("data-layer"), table.attrs.get("data-head")) != (str(layer), str(head)):
            problem(f"{where}: heatmap shows layer {table.attrs.get('data-layer')}, "
                    f"head {table.attrs.get('data-head')}")
        summary = table.parent.find("div", cls="summary")
        wanted = f"head {head} reads {expected_groups[head // (n_heads // n_kv_heads)]}"
        if summary is None or summary.text() != wanted:
            problem(f"{where}: heatmap caption {summary.text() if summary else None!r}, "
                    f"expected {wanted!r}")
        check_labels(table, labels, where)
        check_weights(table, attention_table(model, prompt, layer, head, len(labels)), where)
        # The hand calculation needs the queries and keys after RoPE, which newer dumps carry.
        if "queries" in dump and "keys" in dump:
            check_hand_calculation(dom, index, dump, layer, head, where)


# ---------------------------------------------------------------------------------------------
# A made-up dump with queries and keys, its weights computed here


def softmax(xs):
    top = max(xs)
    exps = [math.exp(x - top) for x in xs]
    return [e / sum(exps) for e in exps]


def make_mock(path):
    rng = random.Random(14)
    n_layers, n_heads, n_kv_heads, hd = 2, 4, 2, 8
    labels = ["<s>", "▁A", "</script>", "<!--", "▁&amp;"]
    n = len(labels)
    vector = lambda: [round(rng.gauss(0, 1.5), 4) for _ in range(hd)]
    queries = [[[vector() for _ in range(n)] for _ in range(n_heads)] for _ in range(n_layers)]
    keys = [[[vector() for _ in range(n)] for _ in range(n_kv_heads)] for _ in range(n_layers)]
    attention = []
    for layer in range(n_layers):
        attention.append([])
        for head in range(n_heads):
            grid = []
            for q in range(n):
                k_vectors = keys[layer][head // (n_heads // n_kv_heads)]
                scores = [sum(a * b for a, b in zip(queries[layer][head][q], k_vectors[k]))
                          / math.sqrt(hd) for k in range(q + 1)]
                grid.append(softmax(scores) + [0.0] * (n - q - 1))
            attention[-1].append(grid)
    dump = {"model": "mock/</script>.bin", "n_layers": n_layers, "n_heads": n_heads,
            "n_kv_heads": n_kv_heads, "group_size": n_heads // n_kv_heads, "head_dim": hd,
            "kind": "GQA", "tokens": list(range(n)), "labels": labels, "attention": attention,
            "queries": queries, "keys": keys}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(dump, f, ensure_ascii=False)


def check_mock_page(dom_path, fragment, mock_path, prompt):
    with open(mock_path, encoding="utf-8") as f:
        dump = json.load(f)
    dom = load_dom(dom_path)
    shown = check_common(dom, fragment, prompt, 1)
    layer, head = shown.get("layer", 0), shown.get("head", 0)
    where = f"mock (layer {layer}, head {head})"
    table = dom.find("table", cls="heatmap", data_model="0")
    if table is None:
        problem(f"{where}: no heatmap")
        return
    check_labels(table, dump["labels"], where)
    weights = dump["attention"][layer][head]
    n = len(dump["labels"])
    rows = [[f"{weights[q][k]:.2f}" if k <= q else "·" for k in range(n)] for q in range(n)]
    check_weights(table, rows, where)
    box = dom.find("div", cls="explain", data_model="0")
    if box is None or int(box.attrs.get("data-query", -1)) != shown.get("query"):
        problem(f"{where}: the hand calculation is not for query {shown.get('query')}")
    check_hand_calculation(dom, 0, dump, layer, head, where)


def check_harness(dom_path):
    """tests/explorer_harness.html writes "name: ok" or "name: FAIL ..." lines into #results."""
    results = load_dom(dom_path).find(id="results")
    lines = results.text().strip().splitlines() if results else []
    if not lines:
        problem("the harness wrote no results")
    for line in lines:
        if not line.endswith(": ok"):
            problem(f"harness: {line}")


def check_refused(dom_path, message):
    """A page whose data its own check refused shows message in #errors and draws nothing."""
    dom = load_dom(dom_path)
    errors = dom.find(id="errors")
    if errors is None or "data-refused" not in errors.attrs or "hidden" in errors.attrs:
        problem("#errors is not shown as a refusal")
    shown = [div.text() for div in errors.find_all("div")] if errors else []
    # Data that does not parse is reported by the browser too (window.onerror), first.
    before = [line for line in shown[:-1] if not line.startswith("Uncaught SyntaxError")]
    if not shown or shown[-1] != message or before:
        problem(f"#errors shows {shown}, expected {[message]}")
    drawn = dom.find_all("table") + dom.find_all("canvas")
    if drawn:
        problem(f"the page drew {len(drawn)} tables or canvases from data it refused")


def main():
    command, args = sys.argv[1], sys.argv[2:]
    if command == "mock":
        make_mock(args[0])
        return
    if command == "page":
        check_page(args[0], args[1], args[2], args[3:])
    elif command == "page-mock":
        check_mock_page(*args)
    elif command == "harness":
        check_harness(args[0])
    elif command == "refused":
        check_refused(*args)
    else:
        sys.exit(f"explorer_dom: unknown command {command}")
    for message in problems:
        print(f"FAIL {message}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
