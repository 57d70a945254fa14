"""Login throttling (django-axes, config/login_throttle.py): failed logins are counted per account from an
address and per address on /accounts/login/ and /admin/login/ alike (per account from everywhere when
LOGIN_LOCKOUT_BY says so); at the limit the right password is refused with 429 until the lockout ends; a
success clears only its own account's count; attempts while locked out do not prolong it."""
from __future__ import annotations

from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.test import Client

from config.security import login_lockout_parameters, positive_int
from tests.factories import make_user

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery"
LOGIN = "/accounts/login/"
ADMIN_LOGIN = "/admin/login/"


def attempt(client: Client, username: str, password: str, *, address: str = "203.0.113.5", path: str = LOGIN):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def logged_in(client: Client) -> bool:
    return "_auth_user_id" in client.session


def fail(client: Client, count: int, *, username: str = "alice", address: str = "203.0.113.5", path: str = LOGIN):
    for _ in range(count):
        response = attempt(client, username, "wrong password", address=address, path=path)
        assert response.status_code in (200, 429)


def assert_locked_out(response) -> None:
    assert response.status_code == 429
    assert response["Retry-After"] == str(settings.LOGIN_LOCKOUT_SECONDS)
    page = response.content.decode()
    assert "Too many login attempts" in page and "Try again in 5 minutes" in page
    assert "registration/locked_out.html" in [template.name for template in response.templates]


def move_clock(seconds: int) -> None:
    """As if `seconds` had passed since every counted failure."""
    for row in AccessAttempt.objects.all():
        row.attempt_time -= timedelta(seconds=seconds)
        row.save(update_fields=["attempt_time"])


@pytest.fixture
def alice():
    return make_user("alice", PASSWORD)


def test_the_defaults():
    assert settings.LOGIN_FAILURE_LIMIT == 10 and settings.LOGIN_LOCKOUT_SECONDS == 300
    assert settings.AXES_LOCKOUT_PARAMETERS == [["username", "ip_address"], "ip_address"]
    assert settings.AXES_HANDLER == "config.login_throttle.OwnFailuresHandler"
    assert settings.AUTHENTICATION_BACKENDS[0] == "config.login_throttle.LoginThrottleBackend"
    assert settings.MIDDLEWARE[-1] == "axes.middleware.AxesMiddleware"


def test_below_the_limit_the_right_password_logs_in(client, alice):
    fail(client, settings.LOGIN_FAILURE_LIMIT - 1)
    response = attempt(client, "alice", PASSWORD)
    assert response.status_code == 302 and logged_in(client)


def test_an_account_is_locked_from_the_guessing_address_but_not_from_elsewhere(client, alice):
    fail(client, settings.LOGIN_FAILURE_LIMIT, address="198.51.100.1")
    assert_locked_out(attempt(client, "alice", PASSWORD, address="198.51.100.1"))
    assert not logged_in(client)
    # Someone else's guesses do not lock alice out where she is.
    elsewhere = Client()
    assert attempt(elsewhere, "alice", PASSWORD, address="192.0.2.77").status_code == 302 and logged_in(elsewhere)


def test_a_login_of_ones_own_account_does_not_clear_guesses_at_another(client, alice):
    make_user("mallory", "mallorys-own-password")
    fail(client, settings.LOGIN_FAILURE_LIMIT - 1, username="alice")
    assert attempt(client, "mallory", "mallorys-own-password").status_code == 302  # axes's reset cleared all 9
    client.post("/accounts/logout/")
    assert_locked_out(attempt(client, "alice", "one more guess"))  # the 10th guess from this address
    assert_locked_out(attempt(client, "alice", PASSWORD))
    assert not logged_in(client)


def test_signing_up_does_not_clear_guesses_at_another(client, alice, settings):
    settings.SIGNUP_ENABLED = True
    fail(client, settings.LOGIN_FAILURE_LIMIT - 1, username="alice")
    response = client.post("/accounts/signup/", {"username": "newcomer", "password1": "a-long-fresh-pass-9",
                                                 "password2": "a-long-fresh-pass-9"}, REMOTE_ADDR="203.0.113.5")
    assert response.status_code == 302 and logged_in(client)  # signing up logs in
    client.post("/accounts/logout/")
    assert_locked_out(attempt(client, "alice", "one more guess"))


def test_with_username_in_lockout_by_an_account_is_locked_from_any_address(client, alice, settings):
    settings.AXES_LOCKOUT_PARAMETERS = login_lockout_parameters("username,ip_address")
    for number in range(settings.LOGIN_FAILURE_LIMIT):
        response = attempt(client, "alice", "wrong password", address=f"198.51.100.{number + 1}")
    assert_locked_out(response)  # the attempt that reaches the limit is told at once
    response = attempt(client, "alice", PASSWORD, address="192.0.2.77")  # a new address, the right password
    assert_locked_out(response)
    assert not logged_in(client)


def test_an_address_is_locked_after_the_limit_for_any_account(client, alice):
    for number in range(settings.LOGIN_FAILURE_LIMIT):
        attempt(client, f"nobody{number}", "wrong password", address="203.0.113.9")
    response = attempt(client, "alice", PASSWORD, address="203.0.113.9")
    assert_locked_out(response)
    assert not logged_in(client)
    # The account itself is not locked: from another address the right password logs in.
    other = Client()
    assert attempt(other, "alice", PASSWORD, address="203.0.113.10").status_code == 302 and logged_in(other)


def test_the_admin_login_is_throttled_the_same_and_shares_the_count(client):
    get_user_model().objects.create_user(username="root", password=PASSWORD, is_staff=True, is_superuser=True)
    half = settings.LOGIN_FAILURE_LIMIT // 2
    fail(client, half, username="root", path=ADMIN_LOGIN)
    fail(client, settings.LOGIN_FAILURE_LIMIT - half, username="root", path=LOGIN)
    response = attempt(client, "root", PASSWORD, path=ADMIN_LOGIN)
    assert_locked_out(response)
    assert not logged_in(client)
    assert client.get("/admin/").status_code == 302  # still sent to the login page


def test_the_admin_login_alone_locks_too(client):
    get_user_model().objects.create_user(username="root", password=PASSWORD, is_staff=True, is_superuser=True)
    fail(client, settings.LOGIN_FAILURE_LIMIT, username="root", path=ADMIN_LOGIN)
    assert_locked_out(attempt(client, "root", PASSWORD, path=ADMIN_LOGIN))


def test_the_lockout_ends_after_the_lockout_time(client, alice):
    fail(client, settings.LOGIN_FAILURE_LIMIT)
    move_clock(settings.LOGIN_LOCKOUT_SECONDS - 10)
    assert_locked_out(attempt(client, "alice", PASSWORD))  # not yet
    move_clock(11)
    response = attempt(client, "alice", PASSWORD)
    assert response.status_code == 302 and logged_in(client)


def test_attempts_while_locked_out_do_not_prolong_the_lockout(client, alice):
    fail(client, settings.LOGIN_FAILURE_LIMIT)
    move_clock(settings.LOGIN_LOCKOUT_SECONDS - 100)
    fail(client, 5)  # an attacker keeps trying during the lockout
    assert_locked_out(attempt(client, "alice", PASSWORD))
    move_clock(101)
    assert attempt(client, "alice", PASSWORD).status_code == 302 and logged_in(client)


def test_a_shorter_lockout_setting_takes_effect(client, alice, settings):
    settings.LOGIN_LOCKOUT_SECONDS = 30
    fail(client, settings.LOGIN_FAILURE_LIMIT)
    response = attempt(client, "alice", PASSWORD)
    assert response.status_code == 429 and response["Retry-After"] == "30"
    assert "Try again in 30 seconds" in response.content.decode()
    move_clock(31)
    assert attempt(client, "alice", PASSWORD).status_code == 302


def test_a_successful_login_clears_the_count(client, alice):
    fail(client, settings.LOGIN_FAILURE_LIMIT - 1)
    assert attempt(client, "alice", PASSWORD).status_code == 302
    client.post("/accounts/logout/")
    assert not logged_in(client)
    fail(client, settings.LOGIN_FAILURE_LIMIT - 1)  # 18 in all, but only 9 since the success
    assert attempt(client, "alice", PASSWORD).status_code == 302 and logged_in(client)


def test_a_lockout_page_changes_nothing_else(client, alice):
    fail(client, settings.LOGIN_FAILURE_LIMIT)
    attempt(client, "alice", PASSWORD)
    alice.refresh_from_db()
    assert alice.last_login is None and alice.is_active


def test_the_test_clients_login_and_force_login_still_work(alice):
    """Client.login authenticates without a request: not a login over the network, so not throttled."""
    client = Client()
    assert client.login(username="alice", password=PASSWORD) is True
    assert client.get("/").status_code == 200
    assert client.login(username="alice", password="wrong") is False
    forced = Client()
    forced.force_login(alice)
    assert forced.get("/").status_code == 200


def test_lockout_by_parses_and_refuses_nonsense():
    assert login_lockout_parameters("username,ip_address") == ["username", "ip_address"]
    assert login_lockout_parameters(" ip_address ") == ["ip_address"]
    assert login_lockout_parameters("username+ip_address,ip_address") == [["username", "ip_address"], "ip_address"]
    for bad in ["", "user", "username,", "username+username", "username;ip_address", "user_agent"]:
        with pytest.raises(ImproperlyConfigured, match="LOGIN_LOCKOUT_BY must be"):
            login_lockout_parameters(bad)
    assert positive_int("LOGIN_FAILURE_LIMIT", "", 10) == 10
    assert positive_int("LOGIN_FAILURE_LIMIT", " 3 ", 10) == 3
    for bad in ["0", "-1", "ten", "1.5"]:
        with pytest.raises(ImproperlyConfigured, match="LOGIN_FAILURE_LIMIT must be a whole number of at least 1"):
            positive_int("LOGIN_FAILURE_LIMIT", bad, 10)
