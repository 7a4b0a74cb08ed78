# SPDX-License-Identifier: MIT
"""docs/api.yaml against a running ballastd (docs/spec.md B6.1: an OpenAPI document in docs/
describes the API and a test checks the running server against it).

One ballastd per module, on a Unix socket and a loopback TCP port, with two VMs: `vm-err` (qemu, a
socket that does not exist: its status becomes "error") and `vm-ok` (qemu, served by the fake QMP
monitor build/tests/qmp-peer, so its actual size is known and stats, targets, parking and the
journal have content). No real VM is needed.

What is checked:
- the document itself: OpenAPI 3.0.3, every $ref resolves, only 3.0 schema keywords, every object
  schema closed (additionalProperties), x-ballast-access on every operation, the routes of
  docs/api.md all present;
- every documented operation: a valid request gets a documented status whose body validates
  against the documented schema (OpenAPI 3.0 `nullable` turned into JSON Schema); park and unpark
  run for real on vm-ok (park → 200 reached/stalled, a park in progress or a second park → 409,
  unpark → 200, a second unpark → 409, unpark with wait, a park past its timeout) and get 503 on
  vm-err; the VM keys of parking, guest statistics and host RSS are checked for both VMs;
- invalid requests derived from the request schemas (a wrong type for each field, values past
  minimum/maximum/maxLength/pattern/enum, an unknown field, each required field missing, the
  oneOf rules, bodies that are not a JSON object) get the documented 400 naming the field; the
  optional bodies (park, unpark) may also be absent or empty;
- every path the document has answers an undocumented method with 405, an Error body and an
  Allow header listing exactly the documented methods; undocumented paths are 404;
- auth: TCP without/with an unknown token is 401, a read token gets 403 on every write
  operation, a read-only Unix peer (uid 65534) gets 403 on every write operation and not on reads;
- transport errors (413, 414, 415) on every operation are documented there;
- every key of every documented response object is seen in a real answer, and no other.

Needs python3-yaml and python3-jsonschema (Debian). Without ballastd or qmp-peer built (or
without those modules) the module is skipped loudly, or fails when BALLAST_REQUIRE_VM is set.
"""

import collections
import copy
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

SRC = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("BALLAST_BUILDDIR", os.path.join(SRC, "build"))
BALLASTD = os.path.join(BUILD, "src", "ballastd")
QMP_PEER = os.path.join(BUILD, "tests", "qmp-peer")
API_YAML = os.path.join(SRC, "docs", "api.yaml")
API_MD = os.path.join(SRC, "docs", "api.md")
MiB = 1 << 20
GiB = 1 << 30
NOBODY = 65534


def _unavailable(msg):
    if os.environ.get("BALLAST_REQUIRE_VM"):
        raise RuntimeError(msg)  # a collection error: the run fails
    pytest.skip(msg, allow_module_level=True)


try:
    import jsonschema
    import yaml
except ImportError as e:
    _unavailable(f"test_openapi needs the Debian packages python3-yaml and python3-jsonschema ({e}); "
                 "the server is NOT being checked against docs/api.yaml")

with open(API_YAML) as _f:
    DOC = yaml.safe_load(_f)

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
MUTATING = {"post", "put", "patch", "delete"}


# ---------------------------------------------------------------------------------------------
# The document: references, OpenAPI 3.0 schema → JSON Schema
# ---------------------------------------------------------------------------------------------

def resolve(ref):
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node = DOC
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def deref(node):
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(node["$ref"])
    return node


OPENAPI_ONLY = {"nullable", "example", "externalDocs", "xml", "discriminator", "readOnly", "writeOnly", "deprecated"}
SCHEMA_KEYWORDS = {"title", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum", "maxLength",
                   "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "maxProperties", "minProperties",
                   "required", "enum", "type", "allOf", "oneOf", "anyOf", "not", "items", "properties",
                   "additionalProperties", "description", "format", "default", "$ref"} | OPENAPI_ONLY
TYPES = {"integer", "number", "string", "boolean", "array", "object"}


def to_jsonschema(node):
    """An OpenAPI 3.0 Schema Object as a self-contained draft-4 JSON Schema: references inlined,
    `nullable: true` turned into a "null" type (and a None in an enum), OpenAPI-only keywords
    dropped."""
    if "$ref" in node:
        return to_jsonschema(resolve(node["$ref"]))
    out = {}
    for k, v in node.items():
        if k in OPENAPI_ONLY or k.startswith("x-"):
            continue
        if k == "properties":
            out[k] = {p: to_jsonschema(s) for p, s in v.items()}
        elif k in ("items", "not") or (k == "additionalProperties" and isinstance(v, dict)):
            out[k] = to_jsonschema(v)
        elif k in ("allOf", "oneOf", "anyOf"):
            out[k] = [to_jsonschema(s) for s in v]
        else:
            out[k] = copy.deepcopy(v)
    if node.get("nullable") is True:
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = out["enum"] + [None]
    return out


_validators = {}


def validator(schema):
    key = id(schema)
    if key not in _validators:
        js = to_jsonschema(schema)
        jsonschema.Draft4Validator.check_schema(js)
        _validators[key] = (schema, jsonschema.Draft4Validator(js))
    return _validators[key][1]


def schema_errors(schema, instance):
    return [f"{'/'.join(map(str, e.absolute_path)) or '(body)'}: {e.message}"
            for e in validator(schema).iter_errors(instance)]


def operations():
    """(path, method, operation) for every operation of the document, in document order."""
    for path, item in DOC["paths"].items():
        item = deref(item)
        for m in METHODS:
            if m in item:
                yield path, m, item[m]


OPS = {op["operationId"]: (path, m, op) for path, m, op in operations()}


def request_schema(op):
    rb = op.get("requestBody")
    if not rb:
        return None
    return deref(rb)["content"]["application/json"]["schema"]


def error_schema(path):
    """The error schema of a path: Error, or HypemanError under x-ballast-errors: hypeman."""
    hypeman = deref(DOC["paths"][path]).get("x-ballast-errors") == "hypeman"
    return "#/components/schemas/HypemanError" if hypeman else "#/components/schemas/Error"


def error_response(path, name):
    """components/responses/NAME for the path (its Hypeman* twin under x-ballast-errors: hypeman)."""
    hypeman = deref(DOC["paths"][path]).get("x-ballast-errors") == "hypeman"
    return deref({"$ref": f"#/components/responses/{'Hypeman' if hypeman else ''}{name}"})


def documented_methods(path):
    item = deref(DOC["paths"][path])
    return {m.upper() for m in METHODS if m in item}


# ---------------------------------------------------------------------------------------------
# Which keys of each documented response object the server has been seen to send
# ---------------------------------------------------------------------------------------------

SEEN_KEYS = collections.defaultdict(set)


def _walk(node, instance, label, seen):
    """Follows the schema along the instance and records, per object label (e.g. "VM",
    "Host.psi"), the keys present. oneOf/anyOf/not add no properties here (checked below)."""
    while "$ref" in node:
        ref = node["$ref"]
        node = resolve(ref)
        if ref.startswith("#/components/schemas/"):
            label = ref.rsplit("/", 1)[1]
    for sub in node.get("allOf", []):
        _walk(sub, instance, label, seen)
    if isinstance(instance, dict):
        props = node.get("properties", {})
        if props:
            seen[label] |= set(instance)
            for k, v in instance.items():
                if k in props:
                    _walk(props[k], v, f"{label}.{k}", seen)
        ap = node.get("additionalProperties")
        if isinstance(ap, dict):
            for v in instance.values():
                _walk(ap, v, f"{label}.*", seen)
    elif isinstance(instance, list) and "items" in node:
        for v in instance:
            _walk(node["items"], v, f"{label}[]", seen)


def _static_labels(node, label, out, stack=()):
    """Every object label reachable from a schema, with its documented properties."""
    while "$ref" in node:
        ref = node["$ref"]
        node = resolve(ref)
        if ref.startswith("#/components/schemas/"):
            label = ref.rsplit("/", 1)[1]
    if label in stack:
        return
    for sub in node.get("allOf", []):
        _static_labels(sub, label, out, stack)
    props = node.get("properties", {})
    if props and node.get("type") == "object":
        out.setdefault(label, set()).update(props)
    for k, s in props.items():
        _static_labels(s, f"{label}.{k}", out, stack + (label,))
    ap = node.get("additionalProperties")
    if isinstance(ap, dict):
        _static_labels(ap, f"{label}.*", out, stack + (label,))
    if "items" in node:
        _static_labels(node["items"], f"{label}[]", out, stack + (label,))


# ---------------------------------------------------------------------------------------------
# HTTP over the Unix socket (and TCP), one request per connection
# ---------------------------------------------------------------------------------------------

class Resp:
    def __init__(self, status, headers, body):
        self.status = status
        self.headers = {k.lower(): v for k, v in headers}
        self.body = body
        try:
            self.json = json.loads(body) if body else None
        except ValueError:
            self.json = None

    @property
    def ctype(self):
        return self.headers.get("content-type", "")

    def __repr__(self):
        return f"<{self.status} {self.ctype}: {self.body[:700].decode('utf-8', 'replace')}>"


NO_BODY = object()


def send(addr, method, target, body=NO_BODY, raw=None, content_type="application/json", headers=None, timeout=30):
    """addr: a Unix socket path or (host, port). body: JSON-encoded; raw: bytes sent as they are."""
    data = raw if raw is not None else (None if body is NO_BODY else json.dumps(body).encode())
    hdrs = {"Host": "localhost", "Connection": "close"}
    if data is not None:
        hdrs["Content-Length"] = str(len(data))
        if content_type:
            hdrs["Content-Type"] = content_type
    hdrs.update(headers or {})
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in hdrs.items()) + "\r\n"
    s = socket.socket(socket.AF_UNIX if isinstance(addr, str) else socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(addr)
        try:
            s.sendall(head.encode() + (data or b""))
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered (413) and closed before reading everything: the answer is still there
        r = http.client.HTTPResponse(s, method=method)
        r.begin()
        return Resp(r.status, r.getheaders(), r.read())
    finally:
        s.close()


# ---------------------------------------------------------------------------------------------
# Checking one answer against the document
# ---------------------------------------------------------------------------------------------

def check(op_id, resp, expect=None, record=True):
    """The status must be documented for the operation and the body valid against the documented
    schema (and media type). expect: the status (or set of statuses) this request must get."""
    path, method, op = OPS[op_id]
    what = f"{method.upper()} {path} ({op_id})"
    if expect is not None:
        exp = {expect} if isinstance(expect, int) else set(expect)
        assert resp.status in exp, f"{what}: expected {sorted(exp)}, got {resp!r}"
    responses = op["responses"]
    assert str(resp.status) in responses, \
        f"{what}: status {resp.status} is not documented (documented: {sorted(responses)}): {resp!r}"
    return check_against(deref(responses[str(resp.status)]), resp, what, record)


def check_against(response, resp, what, record=True):
    content = response.get("content", {})
    mime = resp.ctype.split(";")[0].strip().lower()
    if not content:
        assert not resp.body, f"{what}: {resp.status} documents no body but one came: {resp!r}"
        return resp
    assert mime in content, f"{what}: Content-Type {resp.ctype!r} is not documented ({sorted(content)}): {resp!r}"
    schema = content[mime]["schema"]
    if mime == "application/json":
        assert resp.json is not None or resp.body.strip() == b"null", f"{what}: the body is not JSON: {resp!r}"
        errs = schema_errors(schema, resp.json)
        assert not errs, f"{what}: the {resp.status} body does not match the document:\n  " + \
            "\n  ".join(errs) + f"\nbody: {resp.body.decode('utf-8', 'replace')}"
        if record:
            _walk(schema, resp.json, "(response)", SEEN_KEYS)
    else:
        assert schema.get("type") == "string", what
        resp.body.decode("utf-8")
    for name, h in response.get("headers", {}).items():
        h = deref(h)
        if h.get("required"):
            assert name.lower() in resp.headers, f"{what}: the {resp.status} answer lacks the header {name}: {resp!r}"
    return resp


def check_error(op_id, resp, status, names=None):
    """A documented error of that status; names: a field the message must name."""
    check(op_id, resp, status)
    msg = resp.json["error"]["message"] if "error" in resp.json else resp.json["message"]  # hypeman's is flat
    if names is not None:
        alts = [names] if isinstance(names, str) else list(names)
        assert any(n in msg for n in alts), f"{OPS[op_id][0]}: the message does not name {alts}: {resp!r}"
    return msg


# ---------------------------------------------------------------------------------------------
# The daemon (one per module)
# ---------------------------------------------------------------------------------------------

def free_tcp_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class World:
    """The running daemon, its addresses and the VMs registered for the checks."""

    READ_TOKEN = "openapi-read-token-0123456789"
    WRITE_TOKEN = "openapi-write-token-9876543210"

    def __init__(self, root):
        self.root = root
        self.sock = os.path.join(root, "api.sock")
        self.state = os.path.join(root, "state")
        self.peer_sock = os.path.join(root, "qmp.sock")
        self.port = free_tcp_port()
        self.tcp = ("127.0.0.1", self.port)
        self.proc = None
        self.peer = None
        self.libvirt_available = None
        self.scratch = 0

    def req(self, method, target, body=NO_BODY, **kw):
        return send(self.sock, method, target, body, **kw)

    def log_tail(self, n=40):
        try:
            with open(os.path.join(self.root, "ballastd.log"), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def new_id(self, stem="scratch"):
        self.scratch += 1
        return f"{stem}-{self.scratch}"

    def vm(self, vm_id):
        r = self.req("GET", f"/v1/vms/{vm_id}")
        assert r.status == 200, r
        return r.json


def _wait(cond, timeout, what):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = cond()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def _start(w):
    tokens = os.path.join(w.root, "tokens")
    fd = os.open(tokens, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"# test tokens\n{w.READ_TOKEN} read\n{w.WRITE_TOKEN} write\n")
    os.makedirs(w.state, mode=0o700)
    conf = os.path.join(w.root, "ballastd.ini")
    with open(conf, "w") as f:
        f.write(f"[api]\nsocket = {w.sock}\nlisten = 127.0.0.1:{w.port}\ntokens_file = {tokens}\n"
                f"[state]\ndirectory = {w.state}\n[pressure]\nscope = host\n")
    # The read-only peer (uid 65534) must reach the socket (mode 0666) through the directory.
    os.chmod(w.root, 0o711)

    with open(os.path.join(w.root, "qmp-peer.log"), "wb") as log:
        w.peer = subprocess.Popen([QMP_PEER, "--socket", w.peer_sock, "--ram", str(GiB)], stdin=subprocess.DEVNULL,
                                  stdout=log, stderr=log, start_new_session=True)
    _wait(lambda: os.path.exists(w.peer_sock) or w.peer.poll() is not None, 20, "qmp-peer to listen")
    assert w.peer.poll() is None, f"qmp-peer exited with {w.peer.returncode}"

    with open(os.path.join(w.root, "ballastd.log"), "wb") as log:
        w.proc = subprocess.Popen([BALLASTD, "--config", conf], stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                  start_new_session=True)

    def ready():
        if w.proc.poll() is not None:
            raise AssertionError(f"ballastd exited with {w.proc.returncode} while starting:\n{w.log_tail()}")
        try:
            return w.req("GET", "/v1/health", timeout=5).status == 200
        except OSError:
            return False

    _wait(ready, 60, "ballastd to answer GET /v1/health")

    # The VMs every check uses.
    r = w.req("POST", "/v1/vms", {"id": "vm-err", "driver": "qemu", "socket": os.path.join(w.root, "absent.sock"),
                                  "expected_uid": 107, "assigned_bytes": 512 * MiB, "floor_bytes": 128 * MiB,
                                  "shares": 1000})
    check("registerVm", r, 201)
    r = w.req("POST", "/v1/vms", {"id": "vm-ok", "driver": "qemu", "socket": w.peer_sock,
                                  "expected_uid": os.getuid(), "assigned_bytes": GiB})
    check("registerVm", r, 201)
    _wait(lambda: w.vm("vm-ok")["status"] == "ok" and w.vm("vm-ok")["actual_bytes"] == GiB, 30,
          "vm-ok (the fake QMP monitor) to be ok with its actual size known")
    _wait(lambda: w.vm("vm-err")["status"] == "error", 30, "vm-err to be in error")
    # A hold, so that the host view and the journal have content.
    r = w.req("POST", "/v1/memory/reclaim", {"reclaim_bytes": 128 * MiB, "hold_for": "10m", "reason": "openapi"})
    check("reclaimMemory", r, 200)
    _wait(lambda: w.req("GET", "/v1/history").json["entries"], 10, "a journal entry")
    # libvirt is an optional part of the build: either it registers or it is refused by name.
    r = w.req("POST", "/v1/vms", {"id": "vm-lv", "driver": "libvirt", "domain": "openapi-none",
                                  "assigned_bytes": GiB})
    check("registerVm", r, (201, 400))
    if r.status == 400:
        assert "not available in this build" in r.json["error"]["message"], r
        w.libvirt_available = False
    else:
        w.libvirt_available = True


def _stop(w):
    problems = []
    if w.proc is not None:
        if w.proc.poll() is None:
            w.proc.send_signal(signal.SIGTERM)
            try:
                rc = w.proc.wait(60)
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait(30)
                rc = "killed after 60 s"
            if rc != 0:
                problems.append(f"ballastd did not exit 0 on SIGTERM: {rc}\n{w.log_tail()}")
        else:
            problems.append(f"ballastd died during the tests with {w.proc.returncode}\n{w.log_tail()}")
    if w.peer is not None and w.peer.poll() is None:
        w.peer.send_signal(signal.SIGTERM)
        try:
            w.peer.wait(10)
        except subprocess.TimeoutExpired:
            w.peer.kill()
            w.peer.wait(10)
    return problems


@pytest.fixture(scope="module")
def world(request):
    for binary, what in ((BALLASTD, "ballastd"), (QMP_PEER, "qmp-peer (the fake QEMU monitor)")):
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            msg = (f"{what} is not built: {binary} does not exist (BALLAST_BUILDDIR={BUILD}); "
                   "the server is NOT being checked against docs/api.yaml")
            if os.environ.get("BALLAST_REQUIRE_VM"):
                pytest.fail(msg)
            pytest.skip(msg)
    root = tempfile.mkdtemp(prefix="ballast-openapi-")
    w = World(root)

    def fin():
        try:
            problems = _stop(w)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        assert not problems, "\n".join(problems)

    request.addfinalizer(fin)
    _start(w)
    return w


# ---------------------------------------------------------------------------------------------
# 1. The document
# ---------------------------------------------------------------------------------------------

def _schema_nodes(node, where):
    """Every Schema Object under node (following nothing), with a location."""
    if not isinstance(node, dict):
        return
    yield where, node
    for k in ("properties",):
        for p, s in node.get(k, {}).items():
            yield from _schema_nodes(s, f"{where}.{p}")
    for k in ("items", "not", "additionalProperties"):
        if isinstance(node.get(k), dict):
            yield from _schema_nodes(node[k], f"{where}/{k}")
    for k in ("allOf", "oneOf", "anyOf"):
        for i, s in enumerate(node.get(k, [])):
            yield from _schema_nodes(s, f"{where}/{k}[{i}]")


def _all_schemas():
    for name, s in DOC["components"]["schemas"].items():
        yield from _schema_nodes(s, f"components.schemas.{name}")
    for name, r in DOC["components"].get("responses", {}).items():
        for mt, c in r.get("content", {}).items():
            yield from _schema_nodes(c["schema"], f"components.responses.{name}.{mt}")
    for path, m, op in operations():
        for st, r in op["responses"].items():
            if "$ref" not in r:
                for mt, c in r.get("content", {}).items():
                    yield from _schema_nodes(c["schema"], f"{m.upper()} {path} {st}")
        for p in op.get("parameters", []) + deref(DOC["paths"][path]).get("parameters", []):
            yield from _schema_nodes(deref(p)["schema"], f"{m.upper()} {path} parameter")


def _refs(node):
    if isinstance(node, dict):
        if "$ref" in node:
            yield node["$ref"]
        for v in node.values():
            yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_document_is_openapi_3_0_3():
    assert DOC["openapi"] == "3.0.3"
    assert DOC["info"]["title"] and DOC["info"]["version"]
    for ref in _refs(DOC):
        resolve(ref)
    ids = [op["operationId"] for _, _, op in operations()]
    assert len(ids) == len(set(ids)), f"duplicate operationIds: {ids}"
    schemes = DOC["components"]["securitySchemes"]
    assert schemes["bearerToken"] == {**schemes["bearerToken"], "type": "http", "scheme": "bearer"}
    assert {} in DOC["security"] and {"bearerToken": []} in DOC["security"]
    for where, s in _all_schemas():
        if "$ref" in s:
            assert set(s) == {"$ref"}, f"{where}: a $ref has siblings (ignored in OpenAPI 3.0): {sorted(s)}"
            continue
        extra = {k for k in s if k not in SCHEMA_KEYWORDS and not k.startswith("x-")}
        assert not extra, f"{where}: not OpenAPI 3.0 schema keywords: {sorted(extra)}"
        if "type" in s:
            assert s["type"] in TYPES, f"{where}: type {s['type']!r}"
        if s.get("nullable"):
            assert "type" in s, f"{where}: nullable needs a type beside it in OpenAPI 3.0.3"
            if "enum" in s:
                assert None in s["enum"], f"{where}: a nullable enum must list null"
        if s.get("type") == "object":
            assert "additionalProperties" in s, f"{where}: an object schema must say additionalProperties"
            for k in ("oneOf", "anyOf"):
                for branch in s.get(k, []):
                    assert set(branch.get("properties", {})) <= set(s.get("properties", {})), \
                        f"{where}: a {k} branch brings properties of its own"
        if "pattern" in s:
            re.compile(s["pattern"])
        validator(s)  # a valid JSON Schema once converted


def test_every_operation_documents_access_and_errors():
    for path, m, op in operations():
        what = f"{m.upper()} {path}"
        access = op.get("x-ballast-access")
        assert access == ("write" if m in MUTATING else "read"), f"{what}: x-ballast-access is {access!r}"
        statuses = set(op["responses"])
        need = {"400", "401", "413", "414", "415", "500"} | ({"403"} if access == "write" else set())
        assert need <= statuses, f"{what}: undocumented error statuses {sorted(need - statuses)}"
        for st, r in op["responses"].items():
            r = deref(r)
            if st.startswith("2"):
                assert r.get("content"), f"{what}: {st} has no body schema"
            else:
                s = r["content"]["application/json"]["schema"]
                assert error_schema(path) in list(_refs(s)), f"{what}: {st} is not the {error_schema(path)} schema"
        assert any(st.startswith("2") for st in statuses) or op.get("description", "").find("501") >= 0, \
            f"{what}: no 2xx answer documented"


def _api_md_routes():
    """{(METHOD, path)} from the route headings of docs/api.md ("### `GET /v1/vms` → …",
    "`GET|POST …`", "(write; also `/resources/memory/reclaim`)")."""
    routes = set()
    with open(API_MD) as f:
        for line in f:
            if not line.startswith("### "):
                continue
            method = None
            for m in re.finditer(r"`(?:((?:GET|POST|PUT|PATCH|DELETE)(?:\|(?:GET|POST|PUT|PATCH|DELETE))*) )?(/[^`?\s]*)",
                                 line):
                method = m.group(1) or method  # a bare path has the method before it
                if method:
                    routes |= {(meth, m.group(2)) for meth in method.split("|")}
    return routes


def test_document_has_every_route_of_api_md():
    md = _api_md_routes()
    assert len(md) >= 14, f"could not read the routes of docs/api.md: {sorted(md)}"
    doc = {(m.upper(), p) for p, m, _ in operations()}
    missing = sorted(md - doc)
    assert not missing, f"routes in docs/api.md but not in docs/api.yaml: {missing}"
    extra = sorted(doc - md)
    assert not extra, f"routes in docs/api.yaml that docs/api.md does not have: {extra}"


# ---------------------------------------------------------------------------------------------
# 2. A valid request for every operation
# ---------------------------------------------------------------------------------------------

def v_health(w):
    r = check("getHealth", w.req("GET", "/v1/health"), 200)
    assert r.json["status"] == "ok"


def v_host(w):
    r = check("getHost", w.req("GET", "/v1/host"), 200)
    assert r.json["scope"] == "host" and r.json["vm_count"] >= 2 and r.json["hold"] is not None, r


def v_list(w):
    for path in ["/v1/vms"] + DOC["paths"]["/v1/vms"].get("x-ballast-aliases", []):
        r = check("listVms", w.req("GET", path), 200)
        ids = [v["id"] for v in r.json["vms"]]
        assert ids == sorted(ids) and {"vm-ok", "vm-err"} <= set(ids), (path, ids)


def v_register(w):
    vm_id = w.new_id("reg")
    body = {"id": vm_id, "driver": "qemu", "socket": "/nonexistent/openapi/qmp.sock", "assigned_bytes": 256 * MiB}
    r = check("registerVm", w.req("POST", "/v1/vms", body), 201)
    assert r.json["id"] == vm_id and r.json["expected_uid"] is None and r.json["shares"] == 1000, r
    check("registerVm", w.req("POST", "/v1/vms", body), 409)
    check("deleteVm", w.req("DELETE", f"/v1/vms/{vm_id}"), 200)


def v_get(w):
    for vm_id in ("vm-ok", "vm-err"):
        r = check("getVm", w.req("GET", f"/v1/vms/{vm_id}"), 200)
        assert r.json["id"] == vm_id
    assert w.vm("vm-ok")["actual_bytes"] is not None and w.vm("vm-err")["last_error"]
    check("getVm", w.req("GET", "/v1/vms/no-such-vm"), 404)
    # vm-err never connected: no peer, no guest figures, nothing parked.
    err = w.vm("vm-err")
    assert (err["parked"], err["park_previous_bytes"], err["protected_until"]) == (False, None, None), err
    assert (err["hypervisor_pid"], err["host_rss_bytes"]) == (None, None), err
    assert err["guest"] == {"fresh": False, "pressure": False, "used_bytes": None, "available_bytes": None,
                            "total_bytes": None}, err
    # vm-ok: the peer is qmp-peer itself; its RSS is read from /proc and the fake guest reports
    # statistics (total and available), so the guest view becomes fresh.
    ok = _wait(lambda: (lambda v: v if v["host_rss_bytes"] and v["guest"]["fresh"] else None)(w.vm("vm-ok")), 30,
               "vm-ok's host RSS and fresh guest statistics")
    check("getVm", w.req("GET", "/v1/vms/vm-ok"), 200)
    assert ok["hypervisor_pid"] == w.peer.pid, (ok, w.peer.pid)
    assert ok["host_rss_bytes"] > 0 and ok["host_rss_bytes"] % 1024 == 0, ok
    g = ok["guest"]
    assert isinstance(g["used_bytes"], int) and g["total_bytes"] and g["available_bytes"] is not None, ok
    assert g["available_bytes"] <= g["total_bytes"] and g["used_bytes"] <= g["total_bytes"], ok
    assert ok["parked"] is False and ok["park_previous_bytes"] is None, ok


def v_patch(w):
    r = check("updateVm", w.req("PATCH", "/v1/vms/vm-err", {"shares": 2000}), 200)
    assert r.json["shares"] == 2000
    r = check("updateVm", w.req("PATCH", "/v1/vms/vm-err", {"shares": 1000, "floor_bytes": 128 * MiB,
                                                             "assigned_bytes": 512 * MiB}), 200)
    assert (r.json["shares"], r.json["floor_bytes"], r.json["assigned_bytes"]) == (1000, 128 * MiB, 512 * MiB)
    check("updateVm", w.req("PATCH", "/v1/vms/no-such-vm", {"shares": 1}), 404)


def v_delete(w):
    vm_id = w.new_id("del")
    check("registerVm", w.req("POST", "/v1/vms", {"id": vm_id, "driver": "qemu", "socket": "/nonexistent/d.sock",
                                                  "assigned_bytes": 64 * MiB}), 201)
    r = check("deleteVm", w.req("DELETE", f"/v1/vms/{vm_id}"), 200)
    assert r.json == {"deleted": vm_id}
    check("deleteVm", w.req("DELETE", f"/v1/vms/{vm_id}"), 404)


def v_target(w):
    vm = w.vm("vm-ok")
    r = check("setVmTarget", w.req("PUT", "/v1/vms/vm-ok/target", {"target_bytes": vm["target_bytes"]}), 200)
    assert r.json["target_bytes"] == vm["target_bytes"], r
    check("setVmTarget", w.req("PUT", "/v1/vms/vm-err/target", {"target_bytes": 256 * MiB}), 503)
    check("setVmTarget", w.req("PUT", "/v1/vms/no-such-vm/target", {"target_bytes": 256 * MiB}), 404)


def v_stats(w):
    r = check("getVmStats", w.req("GET", "/v1/vms/vm-ok/stats"), 200)
    assert r.json["id"] == "vm-ok"
    check("getVmStats", w.req("GET", "/v1/vms/vm-err/stats"), 503)
    check("getVmStats", w.req("GET", "/v1/vms/no-such-vm/stats"), 404)


PARK_TOLERANCE = 16 * MiB  # [driver] tolerance, the default: what "reached" means
NOT_KNOWN = "actual size is not known yet"


def _rfc3339(t):
    return datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp()


def _unparked(w, vm_id="vm-ok"):
    """Leaves the VM unparked (a check that stopped half-way must not leave it parked for the
    checks after it). Not a check itself: it must not hide the failure that left it parked."""
    if w.vm(vm_id)["parked"]:
        w.req("POST", f"/v1/vms/{vm_id}/unpark", {"wait": True, "timeout": "1m"}, timeout=90)


def _park_answer(op_id, r, vm_id="vm-ok", results=("reached", "stalled")):
    check(op_id, r, 200)
    a = r.json
    assert a["vm"] == vm_id and a["result"] in results, r
    assert isinstance(a["elapsed_ms"], (int, float)) and a["elapsed_ms"] >= 0, r
    if a["result"] == "reached":
        assert abs(a["reached_bytes"] - a["target_bytes"]) <= PARK_TOLERANCE, r
    return a


def _v_park(w):
    # Refused before anything moves: a VM whose actual size is not known, a VM that is not there.
    for body in (NO_BODY, {"size_bytes": 256 * MiB}, {"size_bytes": 256 * MiB, "timeout": "10s"}):
        check_error("parkVm", w.req("POST", "/v1/vms/vm-err/park", body), 503, NOT_KNOWN)
    check("parkVm", w.req("POST", "/v1/vms/no-such-vm/park"), 404)
    assert w.vm("vm-err")["parked"] is False

    # vm-ok, on the fake QMP monitor: a park without a body (the default size, 128 MiB) ...
    _unparked(w)
    before = _wait(lambda: (lambda v: v if v["actual_bytes"] > 512 * MiB else None)(w.vm("vm-ok")), 30,
                   "vm-ok to be well above the park size")
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", w.req("POST", "/v1/vms/vm-ok/park", timeout=90)))
    t.start()
    try:
        # ... is parked from the moment it is accepted, while the guest is still shrinking:
        parking = _wait(lambda: (lambda v: v if v["parked"] else None)(w.vm("vm-ok")), 10, "vm-ok to be parking")
        assert parking["status"] == "parked" and parking["park_previous_bytes"] is not None, parking
        check("getVm", w.req("GET", "/v1/vms/vm-ok"), 200)
        # another park or an unpark now: 409, a park is in progress; a manual target: 409 too.
        check_error("parkVm", w.req("POST", "/v1/vms/vm-ok/park"), 409, "in progress")
        check_error("unparkVm", w.req("POST", "/v1/vms/vm-ok/unpark"), 409, "in progress")
        check_error("setVmTarget", w.req("PUT", "/v1/vms/vm-ok/target", {"target_bytes": 512 * MiB}), 409, "parked")
    finally:
        t.join(90)
    assert not t.is_alive() and "r" in out, "the park did not answer within 90 s"
    a = _park_answer("parkVm", out["r"])
    prev = parking["park_previous_bytes"]  # the target when the park was accepted
    # The park size, or the guest's working set plus a margin when its statistics show more.
    assert 128 * MiB <= a["target_bytes"] < prev and a["previous_bytes"] == prev, a
    assert a["reached_bytes"] < before["actual_bytes"], a
    parked = w.vm("vm-ok")
    assert parked["parked"] is True and parked["status"] == "parked", parked
    assert parked["park_previous_bytes"] == prev and parked["protected_until"] is None, parked
    # the target is where the park aimed when it got there; a guest left short keeps at least
    # what it reached (plus room to live)
    if a["result"] == "reached":
        assert parked["target_bytes"] == a["target_bytes"], parked
    else:
        assert a["reached_bytes"] - PARK_TOLERANCE <= parked["target_bytes"] <= parked["assigned_bytes"], parked
    # A second park: 409, already parked; a manual target: still 409.
    check_error("parkVm", w.req("POST", "/v1/vms/vm-ok/park", {"size_bytes": 64 * MiB}), 409, "already parked")
    check_error("setVmTarget", w.req("PUT", "/v1/vms/vm-ok/target", {"target_bytes": 512 * MiB}), 409, "parked")

    # The unpark (no wait) answers once the driver has the command: the size before the park.
    a = _park_answer("unparkVm", w.req("POST", "/v1/vms/vm-ok/unpark"), results=("sent",))
    assert a["target_bytes"] == prev and a["previous_bytes"] == parked["target_bytes"], a
    now = time.time()
    vm = check("getVm", w.req("GET", "/v1/vms/vm-ok"), 200).json
    assert vm["parked"] is False and vm["status"] != "parked" and vm["park_previous_bytes"] is None, vm
    assert vm["target_bytes"] == prev, vm
    # protected from reclaim for [park] protect_for (30 s by default) from now
    assert vm["protected_until"] and now + 20 < _rfc3339(vm["protected_until"]) < now + 32, (now, vm)
    # A second unpark: 409, not parked.
    check_error("unparkVm", w.req("POST", "/v1/vms/vm-ok/unpark"), 409, "not parked")


def _v_unpark(w):
    for body in (NO_BODY, {"wait": True}, {"size_bytes": 256 * MiB, "wait": False, "timeout": "5s"}):
        check_error("unparkVm", w.req("POST", "/v1/vms/vm-err/unpark", body), 503, NOT_KNOWN)
    check("unparkVm", w.req("POST", "/v1/vms/no-such-vm/unpark"), 404)
    _unparked(w)
    check_error("unparkVm", w.req("POST", "/v1/vms/vm-ok/unpark", {"wait": True}), 409, "not parked")

    # Park at a given size and deadline, then unpark with wait, asking for more than assigned_bytes
    # (clamped to it): the answer comes once the guest has it back.
    vm = w.vm("vm-ok")
    a = _park_answer("parkVm", w.req("POST", "/v1/vms/vm-ok/park", {"size_bytes": 256 * MiB, "timeout": "1m"},
                                     timeout=90))
    parked = w.vm("vm-ok")
    assert a["target_bytes"] == 256 * MiB and a["previous_bytes"] == parked["park_previous_bytes"], a
    assert parked["parked"] and parked["status"] == "parked", parked
    a = _park_answer("unparkVm", w.req("POST", "/v1/vms/vm-ok/unpark",
                                       {"size_bytes": 1 << 62, "wait": True, "timeout": "1m"}, timeout=90),
                     results=("reached", "stalled", "deadline"))
    assert a["target_bytes"] == vm["assigned_bytes"] and a["previous_bytes"] == parked["target_bytes"], a
    assert a["result"] == "reached", a  # the fake guest does not stall
    back = w.vm("vm-ok")
    assert back["parked"] is False and back["park_previous_bytes"] is None and back["protected_until"], back
    assert abs(back["actual_bytes"] - vm["assigned_bytes"]) <= PARK_TOLERANCE, back

    # A park whose timeout passes before the guest gets there: 200 "deadline", left where it was
    # (its target follows it), still parked.
    a = _park_answer("parkVm", w.req("POST", "/v1/vms/vm-ok/park", {"size_bytes": 128 * MiB, "timeout": "1ms"}),
                     results=("deadline",))
    assert a["target_bytes"] >= 128 * MiB and a["reached_bytes"] > a["target_bytes"] + PARK_TOLERANCE, a
    assert a["message"], a
    vm = w.vm("vm-ok")
    assert vm["parked"] and a["reached_bytes"] <= vm["target_bytes"] <= vm["assigned_bytes"], vm
    a = _park_answer("unparkVm", w.req("POST", "/v1/vms/vm-ok/unpark", {"timeout": "10m"}), results=("sent",))
    assert a["target_bytes"] == vm["park_previous_bytes"] and a["previous_bytes"] == vm["target_bytes"], a
    assert w.vm("vm-ok")["parked"] is False


def v_park(w):
    try:
        _v_park(w)
    finally:
        _unparked(w)  # the checks after this one need vm-ok unparked, even when this one failed


def v_unpark(w):
    try:
        _v_unpark(w)
    finally:
        _unparked(w)


def _reclaim(w, op_id, path):
    r = check(op_id, w.req("POST", path, {"reclaim_bytes": 192 * MiB, "dry_run": True}), 200)
    assert r.json["dry_run"] is True and r.json["hold_until"] is None, r
    acts = {a["vm"]: a["action"] for a in r.json["actions"]}
    assert acts.get("vm-err") == "error" and acts.get("vm-ok") in ("planned", "unchanged"), r
    r = check(op_id, w.req("POST", path, {"reclaim_bytes": 128 * MiB, "hold_for": "10m", "dry_run": False,
                                          "reason": "openapi check"}), 200)
    assert r.json["dry_run"] is False and r.json["hold_until"], r


def v_reclaim(w):
    _reclaim(w, "reclaimMemory", "/v1/memory/reclaim")


def v_reclaim_resources(w):
    """hypeman's shapes: hold_until while a hold exists (the dry run shows the one in force),
    hypeman's names of the VMs and hypervisors, vm-err's error."""
    op_id, path = "reclaimMemoryResources", "/resources/memory/reclaim"
    r = check(op_id, w.req("POST", path, {"reclaim_bytes": 192 * MiB, "dry_run": True}), 200)
    assert r.json["applied_reclaim_bytes"] == 0 and r.json["requested_reclaim_bytes"] == 192 * MiB, r
    acts = {a["instance_id"]: a for a in r.json["actions"]}
    assert acts["vm-err"]["status"] == "error" and acts["vm-err"]["error"], r
    assert acts["vm-ok"]["status"] in ("planned", "unchanged") and acts["vm-ok"]["hypervisor"] == "qemu", r
    if w.libvirt_available:  # a libvirt VM is QEMU's, named by its domain
        assert acts["vm-lv"]["hypervisor"] == "qemu" and acts["vm-lv"]["instance_name"] == "openapi-none", r
    r = check(op_id, w.req("POST", path, {"reclaim_bytes": 128 * MiB, "hold_for": "10m", "dry_run": False,
                                          "reason": "openapi check"}), 200)
    assert r.json["hold_until"], r
    r = check(op_id, w.req("POST", path, {"reclaim_bytes": 128 * MiB, "dry_run": True}), 200)
    assert r.json["hold_until"], r


def v_history(w):
    r = check("getHistory", w.req("GET", "/v1/history"), 200)
    assert r.json["entries"], r
    r = check("getHistory", w.req("GET", "/v1/history?limit=1"), 200)
    assert len(r.json["entries"]) == 1, r
    check("getHistory", w.req("GET", "/v1/history?limit=1000"), 200)


def v_metrics(w):
    r = check("getMetrics", w.req("GET", "/metrics"), 200)
    assert re.match(r"text/plain;\s*version=0\.0\.4", r.ctype), r.ctype
    # ballast_* and the process_* figures every Prometheus client exports (docs/metrics.md).
    sample = re.compile(r'^(ballast|process)_[a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\})? '
                        r'(-?[0-9.eE+-]+|NaN|\+Inf|-Inf)$')
    lines = r.body.decode().splitlines()
    assert lines
    for line in lines:
        assert re.match(r"# (HELP|TYPE) (ballast|process)_", line) or sample.match(line), line


def v_capacity(w):
    r = check("getCapacity", w.req("GET", "/v1/capacity?size=256M"), 200)
    c = r.json
    assert c["size_bytes"] == 256 * MiB and c["vm_count"] >= 2, c
    cost = c["size_bytes"] + c["overhead_bytes"]
    assert c["fit_free"] == c["free_bytes"] // cost, c
    assert c["fit"] == (c["free_bytes"] + c["returnable_bytes"]) // cost, c
    assert c["free_bytes"] == max(0, c["available_bytes"] - c["reserve_bytes"]), c
    r = check("getCapacity", w.req("GET", f"/v1/capacity?size={c['available_bytes'] * 2}"), 200)
    assert r.json["fit_free"] == 0, r


VALID = {
    "getHealth": v_health, "getCapacity": v_capacity, "getHost": v_host, "listVms": v_list, "registerVm": v_register, "getVm": v_get,
    "updateVm": v_patch, "deleteVm": v_delete, "setVmTarget": v_target, "getVmStats": v_stats, "parkVm": v_park,
    "unparkVm": v_unpark, "reclaimMemory": v_reclaim, "reclaimMemoryResources": v_reclaim_resources,
    "getHistory": v_history, "getMetrics": v_metrics,
}
VALID_DONE = set()


@pytest.mark.parametrize("op_id", list(OPS))
def test_valid_request(world, op_id):
    assert op_id in VALID, f"no valid-request check for the documented operation {op_id}: add one"
    VALID[op_id](world)
    VALID_DONE.add(op_id)


# ---------------------------------------------------------------------------------------------
# 3. Invalid request bodies, derived from the request schemas
# ---------------------------------------------------------------------------------------------

BODY_OPS = [i for i, (_, _, op) in OPS.items() if request_schema(op)]
CONCRETE = {"{id}": "vm-err"}
# For each body operation: valid bodies, one per oneOf branch (the first one the server accepts).
BASES = {
    "registerVm": [{"id": "@new", "driver": "qemu", "socket": "/nonexistent/b.sock", "assigned_bytes": 64 * MiB},
                   {"id": "@new", "driver": "libvirt", "domain": "dom", "assigned_bytes": 64 * MiB}],
    "updateVm": [{"shares": 1000}],
    "setVmTarget": [{"target_bytes": 512 * MiB}],
    "reclaimMemory": [{"reclaim_bytes": 0, "dry_run": True}],
    "reclaimMemoryResources": [{"reclaim_bytes": 0, "dry_run": True}],
    "parkVm": [{"size_bytes": 256 * MiB}],
    "unparkVm": [{"wait": False}],
}
# Strings that break a pattern (the document's patterns are few: each must be listed here).
PATTERN_BREAKERS = {
    "^[A-Za-z0-9._-]{1,64}$": ["a/b", "a b", "vm\u00e9", "a:b"],
    "^/": ["relative/qmp.sock", "./qmp.sock"],
    "^([0-9]+|([0-9]+(us|ms|s|m|min|h))+)$": ["5 minutes", "5x", "-1s", "", "m5", "1.5s"],
    # Go durations (hypeman's hold_for)
    "^(0|((([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(us|ms|ns|µs|μs|s|m|h))+))$": ["90", "1min", "-1s", "", "5 m", "1x", "00",
                                                                     "1d", ".s"],
}
WRONG = {
    "integer": ["1", 1.5, True, None, [], {}],
    "number": ["1", True, None, [], {}],
    "string": [1, True, None, [], {}],
    "boolean": ["true", 1, None, [], {}],
    "array": ["x", 1, None, {}],
    "object": ["x", 1, None, []],
}


def op_target(op_id):
    """The method and a concrete path: {id} is vm-err, except for the target (vm-ok, whose actual
    size is known, so that a valid body gets 200 rather than 503). Park and unpark stay on vm-err:
    a body they accept gets 503 (the actual size is not known) and vm-ok is never parked by the
    generic checks; v_park and v_unpark park vm-ok for real."""
    path, m, _ = OPS[op_id]
    vm = "vm-ok" if op_id == "setVmTarget" else CONCRETE["{id}"]
    return m.upper(), path.replace("{id}", vm)


def accepted(op_id, r):
    """Checks the answer to a valid body sent by the generic checks (op_target): 201 for a
    registration, 503 "not known yet" for a park or unpark of vm-err (the body passed the parser,
    which answers first), 200 otherwise."""
    if op_id in ("parkVm", "unparkVm"):
        check_error(op_id, r, 503, NOT_KNOWN)
        return r
    return check(op_id, r, 201 if op_id == "registerVm" else 200)


def body_optional(op_id):
    rb = OPS[op_id][2].get("requestBody")
    return rb is not None and not deref(rb).get("required", False)


def bodies_for(w, op_id, field=None):
    """Fresh copies of the base bodies (new VM ids), those that allow `field` when given."""
    schema = request_schema(OPS[op_id][2])
    out = []
    for b in BASES[op_id]:
        b = copy.deepcopy(b)
        if b.get("id") == "@new":
            b["id"] = w.new_id("inv")
        assert not schema_errors(schema, b), f"{op_id}: base body {b} is not valid: {schema_errors(schema, b)}"
        if field is None or field in b or not _needs_absent(schema, b, field):
            out.append(b)
    return out


def _needs_absent(schema, body, field):
    """Whether adding the field (with any valid value) makes this base body invalid (oneOf)."""
    sample = _valid_value(deref(to_jsonschema(schema))["properties"][field])
    return bool(schema_errors(schema, {**body, field: sample}))


def _valid_value(s):
    if "enum" in s:
        return s["enum"][0]
    t = s["type"][0] if isinstance(s["type"], list) else s["type"]
    if t == "integer":
        return s.get("minimum", 0)
    if t == "boolean":
        return True
    if t == "string":
        return "/x" if s.get("pattern") == "^/" else ("5m" if "pattern" in s and "us|ms" in s["pattern"] else "x")
    raise AssertionError(f"no valid sample for {s}")


def invalid_values(prop):
    """(label, value) pairs the property schema refuses."""
    s = to_jsonschema(prop)
    t = s.get("type")
    t = t[0] if isinstance(t, list) else t
    vals = [(f"type:{type(v).__name__}:{json.dumps(v)[:12]}", v) for v in WRONG[t]]
    if "minimum" in s:
        vals.append(("below-minimum", s["minimum"] - 1))
    if "maximum" in s:
        vals.append(("above-maximum", s["maximum"] + 1))
    if "enum" in s:
        vals.append(("not-in-enum", "no-such-" + str(s["enum"][0])))
    if "maxLength" in s:
        n = s["maxLength"] + 1
        if s.get("pattern") == "^/":
            vals.append(("too-long", "/" + "a" * (n - 1)))
        elif "pattern" in s and "us|ms" in s["pattern"]:
            vals.append(("too-long", "1" * n))
        elif "pattern" in s:
            vals.append(("too-long", "a" * n))
        else:
            vals.append(("too-long", "a" * n))
            vals.append(("too-long-chars", "\u00e9" * n))  # characters, not bytes
    if s.get("minLength", 0) > 0:
        vals.append(("empty", ""))
    if "pattern" in s:
        assert s["pattern"] in PATTERN_BREAKERS, f"no strings that break the pattern {s['pattern']!r}: list some"
        vals += [(f"pattern:{v!r}", v) for v in PATTERN_BREAKERS[s["pattern"]]]
    if "not" in s and "enum" in s["not"]:
        vals += [(f"excluded:{v!r}", v) for v in s["not"]["enum"]]
    return vals


def _field_cases():
    for op_id in BODY_OPS:
        props = deref(request_schema(OPS[op_id][2]))["properties"]
        for field in props:
            yield pytest.param(op_id, field, id=f"{op_id}-{field}")


@pytest.mark.parametrize("op_id,field", list(_field_cases()))
def test_field_constraints_are_enforced(world, op_id, field):
    """Each value the field's schema refuses gets 400 bad_request naming the field (and is not
    taken for an unknown field: the server knows every documented field)."""
    schema = request_schema(OPS[op_id][2])
    prop = deref(schema)["properties"][field]
    method, path = op_target(op_id)
    bases = bodies_for(world, op_id, field)
    assert bases, f"{op_id}: no base body allows {field}"
    base = bases[0]
    for label, value in invalid_values(prop):
        body = {**base, field: value}
        assert schema_errors(schema, body), f"{op_id}: the document accepts {field}={value!r} ({label})"
        r = world.req(method, path, body)
        msg = check_error(op_id, r, 400, field)
        assert "unknown field" not in msg, f"{op_id}: the server does not know the documented field {field}: {r!r}"


@pytest.mark.parametrize("op_id", BODY_OPS)
def test_unknown_field_is_refused(world, op_id):
    method, path = op_target(op_id)
    for base in bodies_for(world, op_id):
        for name in ("bogus", "Shares", "id " if "id" in base else "size"):
            body = {**base, name: 1}
            assert schema_errors(request_schema(OPS[op_id][2]), body)
            check_error(op_id, world.req(method, path, body), 400, f'"{name}"')


@pytest.mark.parametrize("op_id", BODY_OPS)
def test_missing_required_field_is_refused(world, op_id):
    schema = deref(request_schema(OPS[op_id][2]))
    method, path = op_target(op_id)
    cases = 0
    for base in bodies_for(world, op_id):
        required = set(schema.get("required", []))
        for branch in schema.get("oneOf", []):  # the branch this base body is in
            if not schema_errors({**branch, "type": "object"}, base):
                required |= set(branch.get("required", []))
        for field in sorted(required & set(base)):
            body = {k: v for k, v in base.items() if k != field}
            assert schema_errors(schema, body)
            check_error(op_id, world.req(method, path, body), 400, field)
            cases += 1
    if schema.get("minProperties"):
        check_error(op_id, world.req(method, path, {}), 400, list(schema["properties"]))
        cases += 1
    assert cases or not schema.get("required"), op_id


def test_oneof_rules_of_registration(world):
    """The driver decides between `socket` and `uri`/`domain` (VmCreate.oneOf)."""
    schema = request_schema(OPS["registerVm"][2])
    qemu, libvirt = bodies_for(world, "registerVm")
    bad = [({**qemu, "uri": "qemu:///system"}, "uri"), ({**qemu, "domain": "d"}, "domain"),
           ({**libvirt, "socket": "/x.sock"}, "socket"), ({k: v for k, v in qemu.items() if k != "socket"}, "socket"),
           ({k: v for k, v in libvirt.items() if k != "domain"}, "domain"),
           ({**qemu, "driver": "firecracker", "uri": "x"}, "uri")]
    for body, field in bad:
        assert schema_errors(schema, body), body
        check_error("registerVm", world.req("POST", "/v1/vms", body), 400, field)


def test_semantic_rules_in_descriptions(world):
    """Rules the schemas cannot say, written in the descriptions: floor ≤ assigned, the target
    between the floor and assigned, hold_for at most 1h, a park or unpark timeout more than 0 and
    at most 10m, `wait` for unpark only."""
    check_error("registerVm", world.req("POST", "/v1/vms", {"id": world.new_id(), "driver": "qemu", "socket": "/x",
                                                            "assigned_bytes": 64 * MiB, "floor_bytes": 65 * MiB}),
                400, "floor_bytes")
    check_error("updateVm", world.req("PATCH", "/v1/vms/vm-err", {"floor_bytes": 513 * MiB}), 400, "floor_bytes")
    check_error("updateVm", world.req("PATCH", "/v1/vms/vm-err", {"assigned_bytes": 100 * MiB}), 400, "floor_bytes")
    vm = world.vm("vm-ok")
    for t in (vm["assigned_bytes"] + 1, max(vm["floor_bytes"], vm["effective_floor_bytes"]) - 1):
        check_error("setVmTarget", world.req("PUT", "/v1/vms/vm-ok/target", {"target_bytes": t}), 400,
                    "target_bytes")
    for op_id, path in (("reclaimMemory", "/v1/memory/reclaim"), ("reclaimMemoryResources", "/resources/memory/reclaim")):
        check_error(op_id, world.req("POST", path, {"reclaim_bytes": 0, "hold_for": "61m", "dry_run": True}), 400,
                    "hold_for")
        check_error(op_id, world.req("POST", path, {"reclaim_bytes": 0, "hold_for": "2h", "dry_run": True}), 400,
                    "hold_for")
        check(op_id, world.req("POST", path, {"reclaim_bytes": 0, "hold_for": "1h", "dry_run": True}), 200)
    check("reclaimMemory", world.req("POST", "/v1/memory/reclaim", {"reclaim_bytes": 0, "hold_for": "90",
                                                                    "dry_run": True}), 200)
    # hypeman's hold_for is a Go duration: a unit is needed, fractions are fine, a sign is read.
    path = "/resources/memory/reclaim"
    for good in ("1m30s", "1.5m", "+90s", "59m59.999s", "0"):
        check("reclaimMemoryResources", world.req("POST", path, {"reclaim_bytes": 0, "hold_for": good,
                                                                 "dry_run": True}), 200)
    for bad in ("90", "-1s", "1h0m0.001s", "1.5h"):
        check_error("reclaimMemoryResources", world.req("POST", path, {"reclaim_bytes": 0, "hold_for": bad,
                                                                       "dry_run": True}), 400, "hold_for")
    for op_id, path in (("parkVm", "/v1/vms/vm-err/park"), ("unparkVm", "/v1/vms/vm-err/unpark")):
        for bad in ("0", "0s", "0ms", "0us", "1us", "999us", "601s", "11m", "10m1us", "1h", "36000"):
            check_error(op_id, world.req("POST", path, {"timeout": bad}), 400, "timeout")
        for good in ("10m", "600s", "599s1000ms", "1ms", "1000us", "1", "90s"):
            accepted(op_id, world.req("POST", path, {"timeout": good}))
    check_error("parkVm", world.req("POST", "/v1/vms/vm-err/park", {"wait": True}), 400, '"wait"')
    check_error("parkVm", world.req("POST", "/v1/vms/vm-err/park", {"wait": False, "size_bytes": 256 * MiB}), 400,
                '"wait"')


@pytest.mark.parametrize("op_id", BODY_OPS)
def test_boundaries_are_accepted(world, op_id):
    """The documented minimum, maximum and maxLength themselves are accepted (201/200), except
    where a rule of the description refuses them (the target between floor and assigned)."""
    schema = request_schema(OPS[op_id][2])
    props = to_jsonschema(deref(schema))["properties"]
    method, path = op_target(op_id)
    tried = 0
    for base in bodies_for(world, op_id):
        if op_id == "registerVm" and base["driver"] == "libvirt" and not world.libvirt_available:
            continue
        for field, s in props.items():
            if field not in base and _needs_absent(schema, base, field):
                continue
            values = [s[k] for k in ("minimum", "maximum") if k in s]
            if "maxLength" in s and s.get("pattern") != "^/" and "pattern" not in s:
                # uri and domain are limited in bytes (like socket paths), the rest in characters.
                ch = "a" if field in ("uri", "domain") else "\u00e9"
                values.append(ch * s["maxLength"])
            if s.get("pattern") == "^/" and "maxLength" in s:
                values.append("/" + "a" * (s["maxLength"] - 1))
            for v in values:
                body = {**base, field: v}
                if op_id == "registerVm":
                    body["id"] = world.new_id("edge")
                    if field == "floor_bytes" and v > body["assigned_bytes"]:
                        body["assigned_bytes"] = v
                if op_id == "updateVm" and field == "floor_bytes":
                    body["assigned_bytes"] = max(v, 512 * MiB)
                if op_id == "updateVm" and field == "assigned_bytes" and v < 128 * MiB:
                    body["floor_bytes"] = 0
                if op_id == "setVmTarget":
                    continue  # 0 and 2^62 are outside any VM's [floor, assigned]: see test_semantic_rules
                if schema_errors(schema, body):
                    continue
                r = world.req(method, path, body)
                accepted(op_id, r)
                tried += 1
                if op_id == "registerVm":
                    check("deleteVm", world.req("DELETE", f"/v1/vms/{body['id']}"), 200)
    if op_id == "updateVm":  # put vm-err back as it was
        check(op_id, world.req("PATCH", "/v1/vms/vm-err", {"assigned_bytes": 512 * MiB, "floor_bytes": 128 * MiB,
                                                           "shares": 1000}), 200)
    assert tried or op_id == "setVmTarget", op_id


MALFORMED = [("empty", b""), ("not-json", b"{"), ("array", b"[]"), ("string", b'"x"'), ("number", b"1"),
             ("null", b"null"), ("trailing", b"{} x"), ("duplicate-key", b'{"a": 1, "a": 2}'),
             ("nul-byte", b'{"a": "\x00"}'), ("bad-utf8", b'{"a": "\xff"}')]


@pytest.mark.parametrize("op_id", BODY_OPS)
def test_bodies_that_are_not_a_json_object(world, op_id):
    method, path = op_target(op_id)
    for label, raw in MALFORMED:
        r = world.req(method, path, raw=raw)
        if label == "empty" and body_optional(op_id):
            accepted(op_id, r)  # an optional body may be empty: all defaults
        else:
            check(op_id, r, 400)
    # A body is JSON or nothing: another media type is 415, whatever the bytes.
    base = bodies_for(world, op_id)[0]
    for ct in ("text/plain", "application/x-www-form-urlencoded", None):
        r = world.req(method, path, raw=json.dumps(base).encode(), content_type=ct)
        check(op_id, r, 415)
    accepted(op_id, world.req(method, path, raw=json.dumps(base).encode(),
                              content_type="Application/JSON; charset=utf-8"))
    if op_id == "registerVm":
        check("deleteVm", world.req("DELETE", f"/v1/vms/{base['id']}"), 200)
    if body_optional(op_id):
        # No body at all, an empty one of any media type (not read, so not 415) and {}: all defaults.
        accepted(op_id, world.req(method, path))
        for ct in ("text/plain", None):
            accepted(op_id, world.req(method, path, raw=b"", content_type=ct))
        accepted(op_id, world.req(method, path, {}))
    else:
        check(op_id, world.req(method, path), 400)


def test_history_query_is_checked(world):
    param = next(p for p in OPS["getHistory"][2]["parameters"] if p["name"] == "limit")
    s = param["schema"]
    for q in (f"limit={s['minimum'] - 1}", f"limit={s['maximum'] + 1}", "limit=abc", "limit=", "limit=1.5",
              "foo=1", "limit=1&foo=2"):
        check_error("getHistory", world.req("GET", f"/v1/history?{q}"), 400, "limit")
    r = check("getHistory", world.req("GET", f"/v1/history?limit={s['minimum']}"), 200)
    assert len(r.json["entries"]) <= s["minimum"]


def test_capacity_query_is_checked(world):
    for q in ("", "size=", "size=0", "size=abc", "size=1G&foo=2", "foo=1", "size=-1", "size=99999999999999999999",
              "size=5E"):
        check_error("getCapacity", world.req("GET", f"/v1/capacity?{q}" if q else "/v1/capacity"), 400, "size")
    check("getCapacity", world.req("GET", "/v1/capacity?size=1"), 200)


# ---------------------------------------------------------------------------------------------
# 4. Methods and paths the document does not have
# ---------------------------------------------------------------------------------------------

def _concrete(path):
    for k, v in CONCRETE.items():
        path = path.replace(k, v)
    return path


@pytest.mark.parametrize("path", list(DOC["paths"]))
def test_undocumented_methods_are_405(world, path):
    allowed = documented_methods(path)
    mna = error_response(path, "MethodNotAllowed")
    for target in [path] + deref(DOC["paths"][path]).get("x-ballast-aliases", []):
        for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
            if m in allowed:
                continue
            r = world.req(m, _concrete(target))
            assert r.status == 405, f"{m} {target}: expected 405, got {r!r}"
            check_against(mna, r, f"{m} {target}")
            got = {x.strip() for x in r.headers["allow"].split(",")}
            assert got == allowed, f"{m} {target}: Allow says {sorted(got)}, the document has {sorted(allowed)}"
        # HEAD is not GET here: 405 too (an answer to HEAD has no body to check).
        r = world.req("HEAD", _concrete(target))
        assert r.status == 405, f"HEAD {target}: expected 405, got {r!r}"
        got = {x.strip() for x in r.headers["allow"].split(",")}
        assert got == allowed, f"HEAD {target}: Allow says {sorted(got)}, the document has {sorted(allowed)}"


def test_undocumented_paths_are_404(world):
    nf = deref({"$ref": "#/components/responses/NotFound"})
    for p in ("/", "/v1", "/v1/", "/v2/health", "/v1/health/", "/metrics/", "/v1/vm", "/v1/vms/vm-err/",
              "/v1/vms/vm-err/nope", "/v1/vms/vm-err/stats/x", "/v1/vms//stats", "/v1/memory", "/v1/memory/reclaim/",
              "/resources/memory", "/v1/history/1", "/v1/hosts", "/V1/health", "/v1/vms/vm-err/park/",
              "/v1/vms/vm-err/unpark/x", "/v1/vms/vm-err/Park", "/v1/vms/vm-err/parked", "/v1/vms/no-such-vm/park"):
        r = world.req("GET", p)
        assert r.status == 404, f"GET {p}: expected 404, got {r!r}"
        check_against(nf, r, f"GET {p}")
    # An id longer than the documented 64 bytes names no VM.
    for sub in ("", "/target", "/stats", "/park", "/unpark"):
        r = world.req("GET", f"/v1/vms/{'a' * 65}{sub}")
        assert r.status in (404, 405), r
        check_against(deref({"$ref": f"#/components/responses/{'NotFound' if r.status == 404 else 'MethodNotAllowed'}"}),
                      r, sub)


# ---------------------------------------------------------------------------------------------
# 5. Auth (B6.2) and the transport's errors
# ---------------------------------------------------------------------------------------------

def _valid_body(w, op_id):
    if op_id not in BASES:
        return NO_BODY
    return bodies_for(w, op_id)[0]


def test_tcp_needs_a_bearer_token(world):
    for hdrs in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": f"Basic {world.READ_TOKEN}"},
                 {"Authorization": "Bearer"}):
        for op_id in ("getHealth", "listVms", "reclaimMemory"):
            method, path = op_target(op_id)
            r = send(world.tcp, method, path, _valid_body(world, op_id), headers=hdrs)
            check(op_id, r, 401)
            assert r.headers.get("www-authenticate", "").startswith("Bearer"), r
    read = {"Authorization": f"Bearer {world.READ_TOKEN}"}
    write = {"Authorization": f"Bearer {world.WRITE_TOKEN}"}
    for op_id, (path, m, op) in OPS.items():
        method, target = op_target(op_id)
        r = send(world.tcp, method, target, _valid_body(world, op_id), headers=read)
        if op["x-ballast-access"] == "write":
            check(op_id, r, 403)
        else:
            check(op_id, r)
            assert r.status != 403, r
    check("reclaimMemory", send(world.tcp, "POST", "/v1/memory/reclaim", {"reclaim_bytes": 0, "dry_run": True},
                                headers=write), 200)
    check("getHost", send(world.tcp, "GET", "/v1/host", headers=write), 200)


_PEER_SCRIPT = r"""
import json, socket, sys, http.client
path, reqs = sys.argv[1], json.loads(sys.argv[2])
out = []
for method, target, body in reqs:
    data = None if body is None else json.dumps(body).encode()
    head = f"{method} {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
    if data is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(30)
    s.connect(path)
    s.sendall(head.encode() + b"\r\n" + (data or b""))
    r = http.client.HTTPResponse(s, method=method)
    r.begin()
    out.append([r.status, r.getheaders(), r.read().decode("utf-8", "replace")])
    s.close()
print(json.dumps(out))
"""


def test_read_only_unix_peer_cannot_write(world):
    """A Unix-socket peer that is neither root, nor ballastd's uid, nor in write_group may call
    the read operations and gets 403 on every write operation."""
    if os.getuid() != 0:
        pytest.skip("needs root to act as uid 65534")
    reqs, ids = [], []
    for op_id in OPS:
        method, target = op_target(op_id)
        body = _valid_body(world, op_id)
        reqs.append([method, target, None if body is NO_BODY else body])
        ids.append(op_id)
    python = next(p for p in ("/usr/bin/python3", sys.executable) if os.access(p, os.X_OK))
    p = subprocess.run([python, "-c", _PEER_SCRIPT, world.sock, json.dumps(reqs)], user=NOBODY,
                       group=NOBODY, extra_groups=[], capture_output=True, text=True, timeout=120, cwd="/")
    assert p.returncode == 0, f"the uid {NOBODY} client failed: {p.stderr}"
    for op_id, (status, headers, body) in zip(ids, json.loads(p.stdout)):
        r = Resp(status, headers, body.encode())
        if OPS[op_id][2]["x-ballast-access"] == "write":
            check(op_id, r, 403)
        else:
            check(op_id, r)
            assert r.status != 403, (op_id, r)


@pytest.mark.parametrize("op_id", list(OPS))
def test_transport_errors_are_documented(world, op_id):
    """413 (body over 64 KiB), 414 (request target over 4 KiB), 415 (a body that is not JSON)
    and a malformed request target or Content-Length (400) on every operation."""
    method, path = op_target(op_id)
    big = b'{"x": "' + b"a" * (64 << 10) + b'"}'
    check(op_id, world.req(method, path, raw=big), 413)
    check(op_id, world.req(method, path + "?" + "q" * (4 << 10)), 414)
    check(op_id, world.req(method, path, raw=b"{}", content_type="text/plain"), 415)
    check(op_id, world.req(method, path + "?a=\x7f"), 400)


def test_malformed_content_length_is_a_json_400(world):
    """Request heads are checked by src/api/http.c before libmicrohttpd sees them, so a malformed
    Content-Length gets the Error JSON (it used to be libmicrohttpd's own HTML 400)."""
    method, path = op_target("reclaimMemory")
    r = world.req(method, path, raw=b"{}", headers={"Content-Length": "x2"})
    check("reclaimMemory", r, 400)


# ---------------------------------------------------------------------------------------------
# 6. The keys the server sends are exactly the documented ones
# ---------------------------------------------------------------------------------------------

def test_response_keys_are_exactly_the_documented_ones(world):
    for op_id in VALID:
        if op_id in OPS and op_id not in VALID_DONE:
            VALID[op_id](world)
    documented = {}
    for _, _, op in operations():
        for st, r in op["responses"].items():
            if st.startswith("2"):
                for mt, c in deref(r).get("content", {}).items():
                    if mt == "application/json":
                        _static_labels(c["schema"], "(response)", documented)
    exempt = set()
    if not world.libvirt_available:
        exempt |= {("VM", "uri"), ("VM", "domain")}  # only a libvirt VM has them; not in this build
    problems = []
    for label, props in sorted(documented.items()):
        seen = SEEN_KEYS.get(label, set())
        never = sorted(k for k in props - seen if (label, k) not in exempt)
        undocumented = sorted(seen - props)
        if never:
            problems.append(f"{label}: documented but never sent: {never}")
        if undocumented:
            problems.append(f"{label}: sent but not documented: {undocumented}")
    assert not problems, "\n".join(problems)
