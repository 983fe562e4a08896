"""`smtprelay contacts ...` as an operator runs it: the command's own entry point on a
configuration file and its state database (most tests, in this process), and as a
child process beside a running relay, whose next message follows the change."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from smtprelay.cli.main import main
from tests.e2e.test_contact_lists import LIST_HEADER, TOPICS, accepted, states
from tests.support import base_config, running, write_config

HOST = "links.test"
LISTS = {"news": {"account": "acme", "description": "Example news", "unsubscribe_domain": HOST,
                  "https": False, "topics": TOPICS},
         "theirs": {"account": "other", "unsubscribe_domain": HOST, "https": False}}


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path / "smtprelay.yaml", base_config(
        tmp_path / "var", tracking_domains={HOST: {}}, contact_lists=LISTS))


class CLI:
    def __init__(self, config_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.config_path = config_path
        self.capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        """(exit status, stdout, stderr) of `smtprelay contacts ARGS -c CONFIG`."""
        self.capsys.readouterr()
        try:
            status = main(["contacts", *args, "-c", str(self.config_path)])
        except SystemExit as exc:  # argparse's usage errors
            status = int(exc.code or 0)
        out, err = self.capsys.readouterr()
        return status, out, err

    def ok(self, *args: str) -> str:
        status, out, err = self(*args)
        assert (status, err) == (0, ""), (args, err)
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))


@pytest.fixture
def cli(config_path: Path, capsys: pytest.CaptureFixture[str]) -> CLI:
    return CLI(config_path, capsys)


def test_lists(cli: CLI) -> None:
    assert cli.ok("lists").splitlines() == [
        f"{'LIST':<24} {'ACCOUNT':<20} TOPICS (default status)",
        f"{'news':<24} {'acme':<20} sports (OPT_IN), cycling (OPT_IN), daily (OPT_OUT)",
        f"{'theirs':<24} {'other':<20} -"]
    found = cli.json("lists")
    assert [(item["ContactListName"], item["Account"], len(item["Topics"])) for item in found] == [
        ("news", "acme", 3), ("theirs", "other", 0)]


def test_add_get_update_delete(cli: CLI) -> None:
    out = cli.ok("add", "news", "Reader@Example.NET", "--topic", "sports=opt_out",
                 "--topic", "daily=OPT_IN", "--attributes", '{"Name": "John"}')
    lines = out.splitlines()
    assert lines[:6] == [
        "Reader@example.net: added to contact list news",
        "  unsubscribed from the whole list: no",
        f"  topic {'sports':<24} OPT_OUT",
        f"  topic {'cycling':<24} OPT_IN (default)",
        f"  topic {'daily':<24} OPT_IN",
        '  attributes: {"Name": "John"}']
    assert lines[6].startswith("  created ") and len(lines) == 7
    shown = cli.json("get", "news", "reader@example.net".replace("r", "R", 1))
    assert (shown["EmailAddress"], shown["UnsubscribeAll"], shown["TopicPreferences"],
            shown["AttributesData"]) == (
        "Reader@example.net", False,
        [{"TopicName": "sports", "SubscriptionStatus": "OPT_OUT"},
         {"TopicName": "daily", "SubscriptionStatus": "OPT_IN"}], '{"Name": "John"}')

    # The CLI changes the topics it names and keeps the others; DEFAULT takes one away.
    changed = cli.json("update", "news", "Reader@example.net", "--topic", "sports=DEFAULT",
                       "--topic", "cycling=OPT_OUT", "--unsubscribe-all")
    assert changed["TopicPreferences"] == [
        {"TopicName": "cycling", "SubscriptionStatus": "OPT_OUT"},
        {"TopicName": "daily", "SubscriptionStatus": "OPT_IN"}]
    assert changed["UnsubscribeAll"] is True and changed["AttributesData"] == '{"Name": "John"}'
    back = cli.ok("update", "news", "Reader@example.net", "--no-unsubscribe-all",
                  "--attributes", "{}")
    assert back.splitlines()[:2] == ["Reader@example.net: changed on contact list news",
                                     "  unsubscribed from the whole list: no"]
    assert "  attributes: {}" in back.splitlines()

    assert cli.ok("delete", "news", "Reader@EXAMPLE.net") == (
        "Reader@example.net: deleted from contact list news\n")
    assert cli("get", "news", "Reader@example.net") == (
        1, "", "smtprelay: Reader@example.net is not a contact of list 'news'; add it with: "
               "smtprelay contacts add news Reader@example.net\n")


def test_list_filters_like_list_contacts(cli: CLI) -> None:
    cli.ok("add", "news", "a@x.test")
    cli.ok("add", "news", "b@x.test", "--topic", "sports=OPT_OUT")
    cli.ok("add", "news", "c@x.test", "--topic", "sports=OPT_IN", "--topic", "daily=OPT_IN")
    cli.ok("add", "news", "d@x.test", "--unsubscribe-all")
    cli.ok("add", "theirs", "e@x.test")

    def addresses(*args: str) -> list[str]:
        return [c["EmailAddress"] for c in cli.json("list", "news", *args)]

    assert addresses() == ["a@x.test", "b@x.test", "c@x.test", "d@x.test"]
    assert addresses("--status", "opt_out") == ["d@x.test"]
    assert addresses("--topic", "sports", "--status", "OPT_IN") == ["c@x.test"]
    assert addresses("--topic", "sports", "--status", "OPT_IN", "--use-default") == [
        "a@x.test", "c@x.test"]
    assert addresses("--topic", "daily", "--status", "OPT_OUT", "--use-default") == [
        "a@x.test", "b@x.test", "d@x.test"]
    assert addresses("--limit", "1") == ["a@x.test"]
    assert cli.json("list", "news", "--limit", "0") == []

    text = cli.ok("list", "news", "--topic", "sports").splitlines()
    assert text[0].split() == ["ADDRESS", "ALL", "LAST", "UPDATE", "PREFERENCES"]
    assert [(line.split()[0], line.split()[1], line.split()[-1]) for line in text[1:-1]] == [
        ("b@x.test", "in", "sports=OPT_OUT"), ("c@x.test", "in", "daily=OPT_IN")]
    assert text[-1] == "-- 2 contacts"
    assert cli.ok("list", "theirs").splitlines()[-1] == "-- 1 contact"


CONFIG_ERROR = ("smtprelay: contact_lists.nope: no such contact list in the configuration "
                "(lists: news, theirs)\n")


@pytest.mark.parametrize(("args", "status", "stderr"), [
    (["list", "nope"], 1, CONFIG_ERROR),
    (["get", "nope", "a@x.test"], 1, CONFIG_ERROR),
    (["add", "nope", "a@x.test"], 1, CONFIG_ERROR),
    (["update", "nope", "a@x.test", "--unsubscribe-all"], 1, CONFIG_ERROR),
    (["delete", "nope", "a@x.test"], 1, CONFIG_ERROR),
    (["export", "nope"], 1, CONFIG_ERROR),
    (["import", "nope", "missing.csv"], 1, CONFIG_ERROR),
    (["add", "news", "no-at-sign"], 1,
     "smtprelay: ADDRESS: 'no-at-sign' is not an email address (no @)\n"),
    (["add", "news", "a\udcff@x.test"], 1,
     "smtprelay: ADDRESS: 'a\\udcff@x.test' is not UTF-8\n"),
    (["add", "news", "a@x.test", "--topic", "golf=OPT_IN"], 1,
     "smtprelay: --topic golf: Topic golf does not exist in contact list news (its topics: "
     "sports, cycling, daily)\n"),
    (["add", "news", "a@x.test", "--topic", "sports=MAYBE"], 1,
     "smtprelay: --topic: 'MAYBE' is not a subscription status (topic sports): use OPT_IN "
     "or OPT_OUT\n"),
    (["add", "news", "a@x.test", "--topic", "sports=OPT_IN", "--topic", "sports=OPT_OUT"], 1,
     "smtprelay: --topic: topic sports is given twice\n"),
    (["add", "news", "a@x.test", "--attributes", "[1, 2]"], 1,
     "smtprelay: --attributes: the attributes must be a JSON object, not an array\n"),
    (["add", "news", "a@x.test", "--attributes", "{'Name': 'John'}"], 1,
     "smtprelay: --attributes: the attributes are not JSON (Expecting property name enclosed "
     "in double quotes at character 1)\n"),
    (["add", "news", "a@x.test", "--attributes", '{"a": "' + "x" * 4096 + '"}'], 1,
     "smtprelay: --attributes: the attributes are 4105 characters; at most 4096\n"),
    (["update", "news", "nobody@x.test", "--unsubscribe-all"], 1,
     "smtprelay: nobody@x.test is not a contact of list 'news'; add it with: smtprelay "
     "contacts add news nobody@x.test\n"),
    (["update", "news", "nobody@x.test"], 1,
     "smtprelay: nothing to change: give --topic, --unsubscribe-all, --no-unsubscribe-all or "
     "--attributes\n"),
    (["delete", "news", "nobody@x.test"], 1,
     "smtprelay: nobody@x.test is not a contact of list 'news'; add it with: smtprelay "
     "contacts add news nobody@x.test\n"),
    (["list", "news", "--topic", "golf"], 1,
     "smtprelay: --topic golf: Topic golf does not exist in contact list news (its topics: "
     "sports, cycling, daily)\n"),
    (["list", "news", "--use-default"], 1,
     "smtprelay: --use-default applies to a topic: give --topic TOPIC too\n"),
    (["list", "news", "--limit", "-1"], 1, "smtprelay: --limit must be 0 or more\n"),
])
def test_refusals_name_what_is_at_fault_and_what_to_do(cli: CLI, args: list[str],
                                                       status: int, stderr: str) -> None:
    assert cli(*args) == (status, "", stderr)
    assert cli.json("list", "news") == []  # nothing was made


@pytest.mark.parametrize(("args", "wanted"), [
    (["list", "news", "--status", "SUBSCRIBED"], "argument --status: invalid choice: "
                                                 "'SUBSCRIBED'"),
    (["add", "news", "a@x.test", "--topic", "sports"], "argument --topic: 'sports': expected "
                                                       "TOPIC=OPT_IN|OPT_OUT"),
    (["add", "news", "a@x.test", "--topic", "sports=DEFAULT"],
     "argument --topic: 'sports=DEFAULT': expected TOPIC=OPT_IN|OPT_OUT"),
    (["update", "news", "a@x.test", "--topic", "=OPT_IN"],
     "argument --topic: '=OPT_IN': expected TOPIC=OPT_IN|OPT_OUT|DEFAULT"),
    (["get", "news"], "the following arguments are required: ADDRESS"),
])
def test_usage_errors_exit_2(cli: CLI, args: list[str], wanted: str) -> None:
    status, out, err = cli(*args)
    assert (status, out) == (2, "")
    assert wanted in err


def test_a_second_add_already_exists(cli: CLI) -> None:
    cli.ok("add", "news", "a@x.test", "--unsubscribe-all")
    assert cli("add", "news", "a@X.TEST") == (
        1, "", "smtprelay: a@x.test is already a contact of list 'news'; change it with: "
               "smtprelay contacts update news a@x.test ...\n")
    assert cli.json("get", "news", "a@x.test")["UnsubscribeAll"] is True


# -- import and export ---------------------------------------------------------------------


def test_import_reports_each_bad_row_and_sums_up(cli: CLI, tmp_path: Path) -> None:
    cli.ok("add", "news", "kept@x.test", "--topic", "daily=OPT_IN")
    path = tmp_path / "contacts.csv"
    path.write_text(
        "emailAddress,unsubscribeAll,attributesData,topicPreferences.sports,"
        "topicPreferences.daily\n"
        'new@x.test,false,"{""Name"": ""Ann""}",OPT_OUT,\n'
        "kept@x.test,true,,,\n"
        "no-at-sign,false,,,\n"
        "bad@x.test,false,,MAYBE,\n")
    status, out, err = cli("import", "news", str(path))
    assert status == 0
    assert out == "imported 1, updated 1, skipped 2 bad rows, 0 duplicates\n"
    assert err.splitlines() == [
        f"{path}:4: 'no-at-sign' is not an email address (no @)",
        f"{path}:5: 'MAYBE' is not a subscription status (topic sports): use OPT_IN or OPT_OUT"]
    kept = cli.json("get", "news", "kept@x.test")
    assert kept["UnsubscribeAll"] is True
    assert kept["TopicPreferences"] == [{"TopicName": "daily", "SubscriptionStatus": "OPT_IN"}]
    assert json.loads(cli.json("get", "news", "new@x.test")["AttributesData"]) == {"Name": "Ann"}

    ndjson = tmp_path / "more.ndjson"
    ndjson.write_text('{"emailAddress": "new@x.test", "unsubscribeAll": true}\n'
                      '{"emailAddress": "json@x.test", "topicPreferences": '
                      '[{"topicName": "cycling", "subscriptionStatus": "OPT_OUT"}]}\n')
    assert cli.json("import", "news", str(ndjson)) == {
        "imported": 1, "updated": 1, "skipped": 0, "duplicates": 0}

    # Not one good row: the wrong file or list; a script is told.
    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"email": "a@x.test", "reason": "BOUNCE"}\n')
    assert cli("import", "news", str(wrong)) == (
        1, "imported 0, updated 0, skipped 1 bad rows, 0 duplicates\n",
        f"{wrong}:1: unknown key 'email' (expected emailAddress, unsubscribeAll, "
        f"attributesData, topicPreferences)\nsmtprelay: {wrong}: no valid rows\n")
    # A header naming a topic the list lacks imports nothing.
    golf = tmp_path / "golf.csv"
    golf.write_text("emailAddress,topicPreferences.golf\na@x.test,OPT_IN\n")
    assert cli("import", "news", str(golf)) == (
        1, "", f"smtprelay: {golf}:1: column 'topicPreferences.golf': the list has no topic "
               "'golf' (its topics: sports, cycling, daily)\n")
    assert cli("import", "news", str(tmp_path / "missing.csv")) == (
        1, "", f"smtprelay: cannot read {tmp_path / 'missing.csv'}: No such file or "
               "directory\n")
    assert [c["EmailAddress"] for c in cli.json("list", "news")] == [
        "json@x.test", "kept@x.test", "new@x.test"]


def test_export_writes_what_import_reads(cli: CLI, tmp_path: Path,
                                         config_path: Path, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    cli.ok("add", "news", "a@x.test", "--topic", "sports=OPT_OUT", "--attributes",
           '{"Name": "Zoë, Jr."}')
    cli.ok("add", "news", "b@x.test", "--unsubscribe-all")
    assert cli.ok("export", "news").splitlines() == [
        "emailAddress,unsubscribeAll,attributesData,topicPreferences.sports,"
        "topicPreferences.cycling,topicPreferences.daily",
        'a@x.test,false,"{""Name"": ""Zoë, Jr.""}",OPT_OUT,,',
        "b@x.test,true,{},,,"]
    out = tmp_path / "news.ndjson"
    status, printed, err = cli("export", "news", "--output", str(out))
    assert (status, printed, err) == (0, "", f"exported 2 contacts to {out}\n")
    assert [json.loads(line) for line in out.read_text().splitlines()] == [
        {"emailAddress": "a@x.test", "unsubscribeAll": False,
         "attributesData": '{"Name": "Zoë, Jr."}',
         "topicPreferences": [{"topicName": "sports", "subscriptionStatus": "OPT_OUT"}]},
        {"emailAddress": "b@x.test", "unsubscribeAll": True, "attributesData": "{}",
         "topicPreferences": []}]
    before = cli.json("list", "news")
    for address in ("a@x.test", "b@x.test"):
        cli.ok("delete", "news", address)
    assert cli.ok("import", "news", str(out)) == (
        "imported 2, updated 0, skipped 0 bad rows, 0 duplicates\n")
    after = cli.json("list", "news")
    fields = ("EmailAddress", "UnsubscribeAll", "TopicPreferences", "AttributesData")
    assert [[c[k] for k in fields] for c in after] == [[c[k] for k in fields] for c in before]
    # An export that cannot be written leaves no file behind and says why.
    assert cli("export", "news", "--output", str(tmp_path / "no" / "such.csv")) == (
        1, "", f"smtprelay: cannot write {tmp_path / 'no' / 'such.csv'}: No such file or "
               "directory\n")


# -- as a child process beside the running relay -----------------------------------------


def test_a_cli_change_holds_for_the_next_message(tmp_path: Path) -> None:
    with running(tmp_path, tracking_domains={HOST: {}}, contact_lists=LISTS) as relay:
        def contacts(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "smtprelay", "contacts", *args, "-c",
                 str(tmp_path / "smtprelay.yaml")], capture_output=True, text=True, timeout=60)

        cred = relay.credential()
        added = contacts("add", "news", "reader@example.net", "--topic", "sports=OPT_OUT")
        assert (added.returncode, added.stderr) == (0, ""), added.stderr
        held = accepted(relay, cred, ["reader@example.net"], "match report",
                        f"{LIST_HEADER}: news; topic=sports")
        other = accepted(relay, cred, ["reader@example.net"], "tour",
                         f"{LIST_HEADER}: news; topic=cycling")
        assert states(relay, held)["reader@example.net"] == (
            "suppressed", "the recipient unsubscribed from topic 'sports' of contact list "
                          "'news'")
        assert states(relay, other)["reader@example.net"][0] == "queued"

        changed = contacts("update", "news", "reader@example.net", "--topic", "sports=DEFAULT")
        assert changed.returncode == 0, changed.stderr
        again = accepted(relay, cred, ["reader@example.net"], "next match",
                         f"{LIST_HEADER}: news; topic=sports")
        assert states(relay, again)["reader@example.net"][0] == "queued"

        # The refusals of a real run: a status of 1 and one line, no traceback.
        refused = contacts("add", "news", "reader@example.net")
        assert (refused.returncode, refused.stdout) == (1, "")
        assert refused.stderr == ("smtprelay: reader@example.net is already a contact of list "
                                  "'news'; change it with: smtprelay contacts update news "
                                  "reader@example.net ...\n")
        unknown = contacts("get", "nope", "reader@example.net")
        assert (unknown.returncode, unknown.stderr) == (1, CONFIG_ERROR)
