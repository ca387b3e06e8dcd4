"""Drives sf-emulator with simple-salesforce, a Salesforce client nobody here wrote.

Run by `tests/simple_salesforce.rs` (cargo feature `python-tests`), which starts the emulator
over HTTPS with a generated CA and sets:
  SF_EMULATOR_URL      https://127.0.0.1:PORT (the emulator)
  SF_EMULATOR_CA       path of the CA certificate to trust
  SF_EMULATOR_JWT_KEY  path of a PKCS#8 private key whose public half the emulator trusts
Credentials default to the emulator's dev credentials (same env names as the emulator).

simple-salesforce always talks to https://{domain}.salesforce.com and https://{instance}; an
HTTP adapter sends *.salesforce.com to the emulator, as a DNS override would.
"""

import csv
import io
import os
import unittest
from urllib.parse import urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceMalformedRequest,
    SalesforceRefusedRequest,
    SalesforceResourceNotFound,
)

EMU = os.environ["SF_EMULATOR_URL"].rstrip("/")
CA = os.environ["SF_EMULATOR_CA"]
JWT_KEY = os.environ["SF_EMULATOR_JWT_KEY"]
CLIENT_ID = os.environ.get("SF_EMULATOR_CLIENT_ID", "orderbridge-dev-client-id")
CLIENT_SECRET = os.environ.get("SF_EMULATOR_CLIENT_SECRET", "orderbridge-dev-client-secret")
USERNAME = os.environ.get("SF_EMULATOR_USERNAME", "integration@orderbridge.dev")
PASSWORD = os.environ.get("SF_EMULATOR_PASSWORD", "orderbridge-dev-password")
SECURITY_TOKEN = os.environ.get("SF_EMULATOR_SECURITY_TOKEN", "orderbridgedevtoken")
VERSION = "62.0"
TIMEOUT = 20


class EmulatorAdapter(HTTPAdapter):
    """Sends requests for *.salesforce.com to the emulator."""

    def send(self, request, **kwargs):
        kwargs.setdefault("timeout", TIMEOUT)
        parts = urlsplit(request.url)
        if parts.hostname and parts.hostname.endswith(".salesforce.com"):
            emu = urlsplit(EMU)
            request.url = urlunsplit((emu.scheme, emu.netloc, parts.path, parts.query, parts.fragment))
        return super().send(request, **kwargs)


def session():
    s = requests.Session()
    s.verify = CA
    s.mount("https://", EmulatorAdapter())
    return s


def admin(method, path, body=None):
    # Admin writes are JSON only (no cross-site form posts), even when there is nothing to say.
    if body is None and method == "POST":
        body = {}
    r = requests.request(method, f"{EMU}/__admin{path}", json=body, verify=CA, timeout=TIMEOUT)
    r.raise_for_status()
    return r.json()


def login():
    return Salesforce(
        username=USERNAME,
        password=PASSWORD + SECURITY_TOKEN,
        consumer_key=CLIENT_ID,
        consumer_secret=CLIENT_SECRET,
        session=session(),
        version=VERSION,
    )


class EmulatorTest(unittest.TestCase):
    def setUp(self):
        admin("POST", "/reset")

    def test_bulk2_insert_upsert_and_result_files(self):
        sf = login()
        records = [{"Name": f"Bulk {i}", "External_Id__c": f"B-{i}"} for i in range(250)]
        # A row Salesforce refuses: the required Name is missing.
        records.append({"Name": "", "External_Id__c": "B-BAD"})
        [result] = sf.bulk2.Account.insert(records=records, wait=0.1)
        self.assertEqual(result["numberRecordsProcessed"], 251)
        self.assertEqual(result["numberRecordsFailed"], 1)
        job = result["job_id"]
        self.assertTrue(job.startswith("750"))
        failed = sf.bulk2.Account.get_failed_records(job)
        header, row = failed.strip().splitlines()
        # The result repeats the columns as uploaded, after Salesforce's own two.
        self.assertTrue(header.startswith('"sf__Id","sf__Error",'), header)
        self.assertEqual(sorted(header.split(",")[2:]), ['"External_Id__c"', '"Name"'])
        self.assertIn("REQUIRED_FIELD_MISSING", row)
        self.assertIn("B-BAD", row)
        ok = sf.bulk2.Account.get_successful_records(job).strip().splitlines()
        self.assertEqual(len(ok), 1 + 250)
        self.assertTrue(ok[1].startswith('"001'))
        unprocessed = sf.bulk2.Account.get_unprocessed_records(job).strip().splitlines()
        self.assertEqual(len(unprocessed), 1, "the header only")
        # Upsert by external id: the same keys update, a new one creates.
        [up] = sf.bulk2.Account.upsert(
            records=[{"External_Id__c": "B-1", "Phone": "+1 555"}, {"External_Id__c": "B-NEW", "Name": "New"}],
            external_id_field="External_Id__c",
            wait=0.1,
        )
        self.assertEqual(up["numberRecordsFailed"], 0)
        created = sf.bulk2.Account.get_successful_records(up["job_id"])
        self.assertIn('"false"', created)  # B-1 updated
        self.assertIn('"true"', created)  # B-NEW created
        self.assertEqual(sf.Account.get_by_custom_id("External_Id__c", "B-1")["Phone"], "+1 555")
        self.assertEqual(sf.query("SELECT COUNT() FROM Account")["totalSize"], 251)

    def test_bulk2_query_pages_with_locators(self):
        sf = login()
        # Created in one order while the external ids follow another.
        records = [{"Name": f"Q {i}", "External_Id__c": f"Q-{(i * 37) % 250:03}"} for i in range(250)]
        records.append({"Name": 'Acme, "Big"\nCorp', "External_Id__c": "Q-TRICKY"})
        [loaded] = sf.bulk2.Account.insert(records=records, wait=0.1)
        self.assertEqual(loaded["numberRecordsFailed"], 0)
        # simple-salesforce follows Sforce-Locator until "null", one CSV text per page.
        chunks = list(
            sf.bulk2.Account.query(
                "SELECT Id, Name, External_Id__c, Phone FROM Account", max_records=100, wait=0.1
            )
        )
        self.assertEqual(len(chunks), 3)
        rows = []
        for chunk in chunks:
            self.assertTrue(chunk.startswith('"Id","Name","External_Id__c","Phone"\n'), chunk[:60])
            reader = csv.DictReader(io.StringIO(chunk))
            self.assertEqual(reader.fieldnames, ["Id", "Name", "External_Id__c", "Phone"])
            rows.extend(reader)
        self.assertEqual([len(list(csv.DictReader(io.StringIO(c)))) for c in chunks], [100, 100, 51])
        ids = [r["Id"] for r in rows]
        self.assertEqual(len(set(ids)), 251)
        rest_ids = {r["Id"] for r in sf.query_all("SELECT Id FROM Account")["records"]}
        self.assertEqual(set(ids), rest_ids)
        exts = [r["External_Id__c"] for r in rows]
        self.assertNotEqual(exts, sorted(exts), "no ORDER BY: not sorted by external id")
        tricky = next(r for r in rows if r["External_Id__c"] == "Q-TRICKY")
        self.assertEqual(tricky["Name"], 'Acme, "Big"\nCorp')
        self.assertEqual(tricky["Phone"], "")
        # queryAll: one page when it fits.
        [whole] = list(sf.bulk2.Account.query_all("SELECT Id FROM Account", max_records=1000, wait=0.1))
        self.assertEqual(len(list(csv.DictReader(io.StringIO(whole)))), 251)
        stats = admin("GET", "/stats")
        self.assertEqual(stats["api_calls_by_route"]["GET /jobs/query/{id}/results"], 4)
        self.assertEqual(stats["bulk_query_jobs"], 2)

    def test_password_flow_crud_and_upsert(self):
        sf = login()
        self.assertTrue(sf.base_url.startswith(EMU))
        created = sf.Account.create({"Name": "Acme", "External_Id__c": "C-1"})
        self.assertTrue(created["success"])
        acc_id = created["id"]
        self.assertEqual(len(acc_id), 18)
        self.assertTrue(acc_id.startswith("001"))
        self.assertEqual(sf.Account.get(acc_id)["Name"], "Acme")
        self.assertEqual(sf.Account.get_by_custom_id("External_Id__c", "C-1")["Id"], acc_id)
        self.assertEqual(sf.Account.update(acc_id, {"Phone": "+33 1"}), 204)
        # Upsert: 201 created, then 200 updated.
        self.assertEqual(sf.Account.upsert("External_Id__c/C-2", {"Name": "Beta"}), 201)
        self.assertEqual(sf.Account.upsert("External_Id__c/C-2", {"Name": "Beta 2"}), 200)
        # External-id relationship reference in the body.
        status = sf.Order.upsert(
            "External_Id__c/O-1",
            {"Account": {"External_Id__c": "C-1"}, "EffectiveDate": "2026-11-24", "Status": "Draft"},
        )
        self.assertEqual(status, 201)
        res = sf.query("SELECT Id, Status, Account.Name FROM Order WHERE External_Id__c = 'O-1'")
        self.assertEqual(res["totalSize"], 1)
        self.assertEqual(res["records"][0]["Account"]["Name"], "Acme")
        self.assertEqual(sf.Order.delete(res["records"][0]["Id"]), 204)
        self.assertEqual(sf.Account.delete(acc_id), 204)
        # Sforce-Limit-Info is parsed by the client.
        usage = sf.api_usage["api-usage"]
        self.assertGreater(usage.used, 0)
        self.assertEqual(usage.total, 15000)
        self.assertEqual(sf.limits()["DailyApiRequests"]["Max"], 15000)
        fields = {f["name"]: f for f in sf.Account.describe()["fields"]}
        self.assertTrue(fields["External_Id__c"]["externalId"])

    def test_errors_it_expects(self):
        with self.assertRaises(SalesforceAuthenticationFailed) as ctx:
            Salesforce(
                username=USERNAME,
                password="wrong",
                consumer_key=CLIENT_ID,
                consumer_secret=CLIENT_SECRET,
                session=session(),
                version=VERSION,
            )
        self.assertEqual(ctx.exception.code, "invalid_grant")
        sf = login()
        with self.assertRaises(SalesforceMalformedRequest) as ctx:
            sf.Account.create({"Phone": "1"})
        self.assertEqual(ctx.exception.content[0]["errorCode"], "REQUIRED_FIELD_MISSING")
        with self.assertRaises(SalesforceMalformedRequest) as ctx:
            sf.Order.create({"Account": {"External_Id__c": "nope"}, "EffectiveDate": "2026-11-24", "Status": "Draft"})
        self.assertEqual(ctx.exception.content[0]["errorCode"], "INVALID_FIELD")
        with self.assertRaises(SalesforceResourceNotFound):
            sf.Account.get("001000000000000AAA")
        with self.assertRaises(SalesforceMalformedRequest) as ctx:
            sf.query("SELECT Nope__c FROM Account")
        self.assertEqual(ctx.exception.content[0]["errorCode"], "INVALID_FIELD")
        admin("POST", "/faults", {"daily_limit_remaining": 0})
        with self.assertRaises(SalesforceRefusedRequest) as ctx:
            sf.limits()
        self.assertEqual(ctx.exception.content[0]["errorCode"], "REQUEST_LIMIT_EXCEEDED")

    def test_expired_session_is_renewed_by_the_client(self):
        sf = login()
        before = admin("GET", "/stats")["token_requests"].get("password", 0)
        admin("POST", "/faults", {"expire_sessions": True})
        # simple-salesforce sees 401 INVALID_SESSION_ID, logs in again and replays.
        self.assertEqual(sf.limits()["DailyApiRequests"]["Max"], 15000)
        after = admin("GET", "/stats")["token_requests"]["password"]
        self.assertEqual(after, before + 1)

    def test_query_all_follows_next_records_url(self):
        sf = login()
        for chunk in range(3):
            records = [
                {"attributes": {"type": "Account"}, "Name": f"Acc {chunk * 150 + i:04}"} for i in range(150)
            ]
            results = sf.restful("composite/sobjects", method="POST", json={"allOrNone": True, "records": records})
            self.assertTrue(all(r["success"] for r in results))
        res = sf.query_all(
            "SELECT Id, Name FROM Account ORDER BY Name",
            headers={"Sforce-Query-Options": "batchSize=200"},
        )
        self.assertEqual(res["totalSize"], 450)
        self.assertEqual(len(res["records"]), 450)
        self.assertEqual(res["records"][449]["Name"], "Acc 0449")
        stats = admin("GET", "/stats")
        self.assertEqual(stats["api_calls_by_route"]["GET /query/{locator}"], 2)

    def test_composite_with_references(self):
        sf = login()
        v = f"/services/data/v{VERSION}"
        body = {
            "allOrNone": True,
            "compositeRequest": [
                {"method": "POST", "url": f"{v}/sobjects/Account", "referenceId": "acc", "body": {"Name": "Acme"}},
                {"method": "POST", "url": f"{v}/sobjects/Contact", "referenceId": "con",
                 "body": {"LastName": "Doe", "AccountId": "@{acc.id}"}},
                {"method": "GET", "url": f"{v}/sobjects/Contact/@{{con.id}}?fields=AccountId", "referenceId": "get"},
            ],
        }
        out = sf.restful("composite", method="POST", json=body)["compositeResponse"]
        self.assertEqual([r["httpStatusCode"] for r in out], [201, 201, 200])
        self.assertEqual(out[2]["body"]["AccountId"], out[0]["body"]["id"])

    def test_client_credentials_flow(self):
        # simple-salesforce uses this flow for a My Domain and sends the client as HTTP Basic.
        sf = Salesforce(
            consumer_key=CLIENT_ID,
            consumer_secret=CLIENT_SECRET,
            domain="orderbridge-dev.my",
            session=session(),
            version=VERSION,
        )
        self.assertIn("DailyApiRequests", sf.limits())

    def test_jwt_bearer_flow(self):
        sf = Salesforce(
            username=USERNAME,
            consumer_key=CLIENT_ID,
            privatekey_file=JWT_KEY,
            session=session(),
            version=VERSION,
        )
        self.assertIn("DailyApiRequests", sf.limits())


if __name__ == "__main__":
    unittest.main(verbosity=2)
