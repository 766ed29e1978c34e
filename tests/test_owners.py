"""Owners (issue 15): with a login, cancel / delete / resume are the run's owner's or an admin's, checked in
engine/api.py (not only by hiding buttons); without a login everything works as before. Real SQLite store."""

from __future__ import annotations

import pytest

from engine import api
from engine.checkpoint import PPO_STATE_FILE
from engine.lab_settings import SettingsError, auth_problem, network_problem, parse_settings
from engine.owners import LoginError, NotOwnerError, User, user_from_proxy
from engine.store import Store
from tests.test_api import small_config

ALICE, BOB, ADMIN = User("alice@example.org"), User("bob@example.org"), User("lead@example.org", admin=True)


@pytest.fixture
def lab(tmp_path):
    store = Store(tmp_path / "lab.db")
    yield api.Lab(store, start_worker=False)
    store.close()


def stopped_with_checkpoint(lab, tmp_path, user: User | None) -> str:
    """A queued run of `user`, cancelled, with a resumable checkpoint on disk (so only the owner check decides)."""
    run_id = lab.start_run(small_config(), user=user)
    lab.cancel_run(run_id, user=user)
    ckpt = tmp_path / f"ckpt-{run_id}"
    ckpt.mkdir()
    (ckpt / PPO_STATE_FILE).write_bytes(b"x")
    lab.store.add_checkpoint(run_id, 1, ckpt)
    return run_id


def test_start_run_records_the_owner_and_no_login_records_none(lab):
    mine = lab.start_run(small_config("a"), user=ALICE)
    nobody = lab.start_run(small_config("n"))
    assert lab.get_run(mine).owner_user == "alice@example.org"
    assert lab.get_run(nobody).owner_user is None


def test_other_user_cannot_cancel_delete_or_resume(lab, tmp_path):
    run_id = lab.start_run(small_config(), user=ALICE)
    with pytest.raises(NotOwnerError, match=f"run {run_id} belongs to alice@example.org: only its owner or an admin "
                                            "may cancel it"):
        lab.cancel_run(run_id, user=BOB)
    assert lab.get_run(run_id).status == "queued"  # nothing happened
    with pytest.raises(NotOwnerError, match="may delete it"):
        lab.delete_run(run_id, user=BOB)
    assert lab.get_run(run_id).status == "queued"
    stopped = stopped_with_checkpoint(lab, tmp_path, ALICE)
    with pytest.raises(NotOwnerError, match="may resume it"):
        lab.resume_run(stopped, user=BOB)
    assert lab.get_run(stopped).status == "cancelled"
    assert not lab.may_act(lab.get_run(run_id), BOB)


def test_owner_can_cancel_resume_and_delete(lab, tmp_path):
    run_id = lab.start_run(small_config(), user=ALICE)
    assert lab.cancel_run(run_id, user=ALICE) == "cancelled"
    lab.delete_run(run_id, user=ALICE)
    with pytest.raises(KeyError):
        lab.get_run(run_id)
    stopped = stopped_with_checkpoint(lab, tmp_path, ALICE)
    lab.resume_run(stopped, user=ALICE)
    assert lab.get_run(stopped).status == "queued"
    assert lab.may_act(lab.get_run(stopped), ALICE)


def test_admin_can_act_on_anyones_run_and_on_runs_from_before_owners(lab, tmp_path):
    theirs = lab.start_run(small_config(), user=ALICE)
    assert lab.cancel_run(theirs, user=ADMIN) == "cancelled"
    lab.delete_run(theirs, user=ADMIN)
    stopped = stopped_with_checkpoint(lab, tmp_path, ALICE)
    lab.resume_run(stopped, user=ADMIN)
    assert lab.get_run(stopped).status == "queued"
    old = lab.start_run(small_config())  # no owner: from before owners, or started without login
    with pytest.raises(NotOwnerError, match="was started before owners existed .*: only an admin may cancel it"):
        lab.cancel_run(old, user=ALICE)
    assert lab.cancel_run(old, user=ADMIN) == "cancelled"


def test_without_login_everything_works_as_before(lab, tmp_path):
    theirs = lab.start_run(small_config(), user=ALICE)  # even a run someone started with login on
    assert lab.cancel_run(theirs) == "cancelled"
    lab.delete_run(theirs)
    stopped = stopped_with_checkpoint(lab, tmp_path, None)
    lab.resume_run(stopped)
    assert lab.get_run(stopped).status == "queued"


def test_resume_refuses_a_run_without_checkpoint_with_the_reason(lab):
    run_id = lab.start_run(small_config(), user=ALICE)
    lab.cancel_run(run_id, user=ALICE)
    with pytest.raises(ValueError, match="no checkpoint to resume from"):
        lab.resume_run(run_id, user=ALICE)


def test_a_name_that_only_starts_like_the_owner_is_not_the_owner(lab):
    run_id = lab.start_run(small_config(), user=ALICE)
    for name in ("alice@example.org ", "alice@example.or", "ALICE@example.org", ""):
        with pytest.raises(NotOwnerError):
            lab.cancel_run(run_id, user=User(name))


# ---- the proxy's headers and the [auth] settings


def test_user_from_proxy_trusts_the_header_only_with_the_secret():
    secret = "s3cret-0123456789abcdef"
    headers = {"x-lab-user": "alice@example.org", "X-Lab-Proxy-Secret": secret}
    user = user_from_proxy(headers, "X-Lab-User", "X-Lab-Proxy-Secret", secret, admins=("lead@example.org",))
    assert user == User("alice@example.org", admin=False)
    admin = user_from_proxy({**headers, "x-lab-user": "lead@example.org"}, "X-Lab-User", "X-Lab-Proxy-Secret",
                            secret, admins=("lead@example.org",))
    assert admin.admin
    for bad in ({"x-lab-user": "alice@example.org"}, {**headers, "X-Lab-Proxy-Secret": secret[:-1]},
                {**headers, "X-Lab-Proxy-Secret": ""}):
        with pytest.raises(LoginError, match="did not come through the lab's login proxy"):
            user_from_proxy(bad, "X-Lab-User", "X-Lab-Proxy-Secret", secret)
    with pytest.raises(LoginError, match="no proxy secret"):  # an unset secret must not match an absent header
        user_from_proxy({"x-lab-user": "alice"}, "X-Lab-User", "X-Lab-Proxy-Secret", "")
    for name in ("", "a\nb", "x" * 321):
        with pytest.raises(LoginError, match="no \\(valid\\) user"):
            user_from_proxy({**headers, "x-lab-user": name}, "X-Lab-User", "X-Lab-Proxy-Secret", secret)


def test_auth_settings_and_the_network_rule(tmp_path, monkeypatch):
    monkeypatch.delenv("RLAIF_LAB_ALLOW_UNAUTHENTICATED_NETWORK", raising=False)
    none = parse_settings({}, tmp_path)
    assert not none.auth.login and network_problem("0.0.0.0", none)
    proxy = parse_settings({"auth": {"mode": "proxy", "admins": ["lead@example.org"]}}, tmp_path)
    assert proxy.auth.login and proxy.auth.admins == ("lead@example.org",)
    assert network_problem("0.0.0.0", proxy) is None  # login configured: allowed beyond loopback
    assert "needs a shared secret" in auth_problem(proxy, "")
    assert "needs a shared secret" in auth_problem(proxy, "short")
    assert auth_problem(proxy, "0123456789abcdef") is None and auth_problem(none, "") is None
    for table, field in (({"mode": "oidc"}, "auth.mode"), ({"admins": "a"}, "auth.admins"),
                         ({"user_header": "X User"}, "auth.user_header"), ({"secret": "x"}, "unknown key"),
                         ({"user_header": "X-A", "secret_header": "x-a"}, "must differ")):
        with pytest.raises(SettingsError, match=field):
            parse_settings({"auth": table}, tmp_path)
