"""Unit tests of the Python adapter's trace-context handling.

Run: ``python3 -m unittest discover -s adapters/python`` (with the
requirements installed; tests/python_adapter_e2e.rs runs them too).
"""

import unittest

import sagaflow_adapter as a

PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
STATE = "sagaflow-e2e=t61rcWkgMzE,rojo=00f067aa0ba902b7"


class ValidTracestate(unittest.TestCase):
    def test_a_w3c_list_is_kept_unchanged_but_trimmed(self):
        self.assertEqual(a.valid_tracestate(STATE), STATE)
        self.assertEqual(a.valid_tracestate(f" \t{STATE} "), STATE)
        self.assertEqual(a.valid_tracestate("a=1,,b@vendor=x y"), "a=1,,b@vendor=x y")

    def test_a_bad_list_is_dropped(self):
        for bad in [None, "", " ", ",", "novalue", "Upper=1", "a=", "a=b=c", "a=\x01"]:
            self.assertIsNone(a.valid_tracestate(bad), repr(bad))

    def test_the_length_and_member_limits(self):
        at_limit = "k=" + "v" * (a.TRACESTATE_MAX_LEN - 2)
        self.assertEqual(a.valid_tracestate(at_limit), at_limit)
        self.assertIsNone(a.valid_tracestate(at_limit + "v"))
        many = ",".join(f"k{i}=v" for i in range(32))
        self.assertEqual(a.valid_tracestate(many), many)
        self.assertIsNone(a.valid_tracestate(many + ",k32=v"))


class TraceHeaders(unittest.TestCase):
    def test_the_commands_tracestate_goes_with_its_traceparent(self):
        headers = [("sagaflow-saga-id", b"s"), ("traceparent", b"ignored"), ("tracestate", STATE.encode())]
        self.assertEqual(
            a.trace_headers({"trace_parent": PARENT}, headers),
            {"traceparent": PARENT, "tracestate": STATE},
        )

    def test_the_header_traceparent_when_the_field_is_empty(self):
        headers = [("traceparent", PARENT.encode()), ("tracestate", STATE.encode())]
        self.assertEqual(
            a.trace_headers({"trace_parent": None}, headers),
            {"traceparent": PARENT, "tracestate": STATE},
        )

    def test_no_tracestate_without_a_traceparent_or_when_invalid(self):
        self.assertEqual(a.trace_headers({"trace_parent": None}, [("tracestate", STATE.encode())]), {})
        self.assertEqual(
            a.trace_headers({"trace_parent": PARENT}, [("tracestate", b"not a list")]),
            {"traceparent": PARENT},
        )
        self.assertEqual(a.trace_headers({"trace_parent": None}, None), {})


if __name__ == "__main__":
    unittest.main()
