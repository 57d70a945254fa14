"""Accounts over HTTP: sign-up (which a setting turns off), login with Django's form, logout."""
from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from tests.factories import make_room, make_user

pytestmark = pytest.mark.django_db


def test_signup_creates_an_account_and_logs_in(client):
    response = client.post("/accounts/signup/", {"username": "newbie", "password1": "a-long-enough-password",
                                                  "password2": "a-long-enough-password"})
    assert response.status_code == 302 and response.url == "/"
    assert get_user_model().objects.filter(username="newbie").exists()
    assert client.get("/").status_code == 200


@pytest.mark.parametrize("form, error", [
    ({"username": "x", "password1": "a-long-enough-password", "password2": "different-password"}, "didn"),
    ({"username": "x", "password1": "123", "password2": "123"}, "too short"),
    ({"username": "", "password1": "a-long-enough-password", "password2": "a-long-enough-password"}, "required"),
])
def test_bad_signups_are_refused_with_a_reason_and_create_nothing(client, form, error):
    response = client.post("/accounts/signup/", form)
    assert response.status_code == 200 and error in response.content.decode()
    assert not get_user_model().objects.exists()


def test_signup_can_be_turned_off(client, settings):
    settings.SIGNUP_ENABLED = False
    assert client.get("/accounts/signup/").status_code == 404
    response = client.post("/accounts/signup/", {"username": "n", "password1": "a-long-enough-password",
                                                  "password2": "a-long-enough-password"})
    assert response.status_code == 404 and not get_user_model().objects.exists()


def test_login_logout_and_the_home_page(client):
    user = make_user("alice", "a-long-enough-password")
    make_room(user, "Mine <b>bold</b>")
    assert client.get("/").url.startswith("/accounts/login/")
    response = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert response.status_code == 200 and "correct username and password" in response.content.decode()
    response = client.post("/accounts/login/", {"username": "alice", "password": "a-long-enough-password"})
    assert response.status_code == 302
    page = client.get("/", follow=True).content.decode()
    assert "Mine &lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page
    assert client.post("/accounts/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_static_files_are_served_by_the_app_itself(client):
    response = client.get("/static/chatrooms/app.css")
    assert response.status_code == 200
    assert b".topbar" in b"".join(response.streaming_content)


def test_the_readmes_script_login_works_over_https():
    """The README's "Talking to it from a script", step by step, against a request that came over HTTPS,
    where Django's CSRF check also wants a Referer (a script sends none unless told to)."""
    from django.test import Client

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert 'headers={"Referer": f"{BASE}/accounts/login/"}' in readme  # what the example sends
    make_user("alice", "correct-horse-battery")
    base = "https://testserver"
    script = Client(enforce_csrf_checks=True)
    assert script.get("/accounts/login/", secure=True).status_code == 200
    csrf = script.cookies["csrftoken"].value
    form = {"username": "alice", "password": "correct-horse-battery", "csrfmiddlewaretoken": csrf}
    without_referer = script.post("/accounts/login/", form, secure=True)
    assert without_referer.status_code == 403  # the example as it was
    response = script.post("/accounts/login/", form, secure=True, HTTP_REFERER=f"{base}/accounts/login/")
    assert response.status_code == 302 and script.cookies["sessionid"].value
