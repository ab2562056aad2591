"""`verify_webhook` against signatures made as topup makes them (shared/src/webhooks/mod.rs)."""

import hashlib
import hmac
import json
import pathlib
import re
import unittest

import topup

ROOT = pathlib.Path(__file__).resolve().parents[3]
T = 1_700_000_000
EVENT = {"id": "evt_1", "type": "balance.low", "created": T, "account_id": "acme", "data": {"balance": 4}}
BODY = json.dumps(EVENT, separators=(",", ":")).encode()


def header(secret, t=T, body=BODY):
    return f"t={t},v1=" + hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()


class Verify(unittest.TestCase):
    def test_the_rust_codes_own_test_vector_verifies(self):
        # shared/src/webhooks/mod.rs pins HMAC-SHA256("whsec_test", "1700000000.{}") in its unit
        # test; read it from there, so that a change of the scheme on either side fails here.
        rust = (ROOT / "shared/src/webhooks/mod.rs").read_text()
        m = re.search(r'signature\("whsec_test", 1_700_000_000, "\{\}"\);\s*assert_eq!\(sig, "([0-9a-f]{64})"\)', rust)
        self.assertIsNotNone(m, "the Rust test vector moved")
        self.assertEqual(topup.sign_webhook("{}", "whsec_test", T), f"t={T},v1={m.group(1)}")
        self.assertEqual(topup.verify_webhook(b"{}", f"t={T},v1={m.group(1)}", "whsec_test", now=T + 100), {})

    def test_a_delivery_verifies_and_answers_its_event(self):
        self.assertEqual(topup.verify_webhook(BODY, header("whsec_a"), "whsec_a", now=T + 299), EVENT)
        self.assertEqual(topup.verify_webhook(BODY.decode(), header("whsec_a"), "whsec_a", now=T - 299), EVENT)

    def test_another_secret_or_a_changed_body_is_refused(self):
        with self.assertRaises(topup.SignatureError) as cm:
            topup.verify_webhook(BODY, header("whsec_a"), "whsec_b", now=T)
        self.assertEqual(cm.exception.code, "no_matching_signature")
        with self.assertRaises(topup.SignatureError):
            topup.verify_webhook(BODY + b" ", header("whsec_a"), "whsec_a", now=T)
        with self.assertRaises(topup.SignatureError):
            # the signature of another timestamp, presented with this one
            sig = header("whsec_a", T + 1).split("v1=")[1]
            topup.verify_webhook(BODY, f"t={T},v1={sig}", "whsec_a", now=T)

    def test_a_timestamp_outside_the_tolerance_is_refused(self):
        for now, tolerance in ((T + 301, 300), (T - 301, 300), (T + 11, 10)):
            with self.assertRaises(topup.SignatureError) as cm:
                topup.verify_webhook(BODY, header("whsec_a"), "whsec_a", tolerance, now=now)
            self.assertEqual(cm.exception.code, "timestamp_out_of_tolerance")
        self.assertEqual(topup.verify_webhook(BODY, header("whsec_a"), "whsec_a", 10, now=T + 10), EVENT)

    def test_during_a_rotation_either_secret_verifies(self):
        both = header("whsec_new") + ",v1=" + header("whsec_old").split("v1=")[1]
        self.assertEqual(topup.verify_webhook(BODY, both, "whsec_old", now=T), EVENT)
        self.assertEqual(topup.verify_webhook(BODY, both, "whsec_new", now=T), EVENT)
        with self.assertRaises(topup.SignatureError):
            topup.verify_webhook(BODY, both, "whsec_other", now=T)

    def test_a_malformed_header_is_refused(self):
        for h in ("", "garbage", f"t={T}", "v1=abc", f"t=x,v1={'0' * 64}"):
            with self.assertRaises(topup.SignatureError) as cm:
                topup.verify_webhook(BODY, h, "whsec_a", now=T)
            self.assertEqual(cm.exception.code, "malformed_header", h)

    def test_a_signed_body_that_is_not_an_object_is_refused(self):
        with self.assertRaises(topup.SignatureError) as cm:
            topup.verify_webhook(b"[1]", header("whsec_a", body=b"[1]"), "whsec_a", now=T)
        self.assertEqual(cm.exception.code, "malformed_payload")

    def test_a_signature_error_is_a_topup_error(self):
        self.assertTrue(issubclass(topup.SignatureError, topup.TopupError))

    def test_without_now_the_clock_is_used(self):
        body = b'{"id":"evt_2"}'
        self.assertEqual(topup.verify_webhook(body, topup.sign_webhook(body, "s"), "s"), {"id": "evt_2"})
        with self.assertRaises(topup.SignatureError):
            topup.verify_webhook(body, topup.sign_webhook(body, "s", T), "s")


if __name__ == "__main__":
    unittest.main()
