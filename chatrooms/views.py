"""Pages: sign-up, the room pages and their htmx partials. Thin: forms, services and selectors do the work."""
from __future__ import annotations

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from . import selectors, services
from .catalog import model_choices
from .forms import RoomConfigureForm, RoomNameForm, SignupForm
from .selectors import RoomNotFound
from .services import ActionRefused

PAGE_SIZE = 50


@require_http_methods(["GET", "POST"])
def signup(request: HttpRequest) -> HttpResponse:
    if not settings.SIGNUP_ENABLED:
        raise Http404("Sign-up is turned off on this server.")
    if request.user.is_authenticated:
        return redirect(settings.LOGIN_REDIRECT_URL)
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        return redirect(settings.LOGIN_REDIRECT_URL)
    return render(request, "registration/signup.html", {"form": form})


def _room_or_404(request: HttpRequest, room_id: int):
    try:
        return selectors.room_get_for_user(user=request.user, room_id=room_id)
    except RoomNotFound:
        raise Http404("No such room.") from None


def _go(request: HttpRequest, url: str) -> HttpResponse:
    """After a form: htmx follows HX-Redirect (a full page), a browser without JavaScript a 303."""
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    rooms = selectors.room_list_for_user(user=request.user)
    if rooms:
        return redirect("chatrooms:room", room_id=int(rooms[0]["id"]))
    return render(request, "chatrooms/room.html", {"rooms": rooms, "room": None, "create_form": RoomNameForm()})


@login_required
@require_GET
def room_detail(request: HttpRequest, room_id: int) -> HttpResponse:
    room = _room_or_404(request, room_id)
    page = selectors.message_page_for_room(room=room, before_id=None, limit=PAGE_SIZE)
    context = {
        "rooms": selectors.room_list_for_user(user=request.user),
        "room": room,
        "is_owner": room.owner_id == request.user.pk,
        "page": page,
        "create_form": RoomNameForm(),
        "configure_form": RoomConfigureForm(initial={"model": room.model, "system_prompt": room.system_prompt}),
        "models": model_choices(),
    }
    return render(request, "chatrooms/room.html", context)


@login_required
@require_GET
def older_messages(request: HttpRequest, room_id: int) -> HttpResponse:
    room = _room_or_404(request, room_id)
    try:
        before = int(request.GET["before"])
    except (KeyError, ValueError):
        return HttpResponse("`before` must be a message id.", status=400)
    page = selectors.message_page_for_room(room=room, before_id=before, limit=PAGE_SIZE)
    return render(request, "chatrooms/room.html#older", {"room": room, "page": page})


@login_required
@require_GET
def message_detail(request: HttpRequest, room_id: int, message_id: int) -> HttpResponse:
    room = _room_or_404(request, room_id)
    message = selectors.message_get_in_room(room=room, message_id=message_id)
    if message is None:
        raise Http404("No such message.")
    return render(request, "chatrooms/room.html#message", {"message": message, "user": request.user})


@login_required
@require_POST
def room_create(request: HttpRequest) -> HttpResponse:
    form = RoomNameForm(request.POST)
    if not form.is_valid():
        return _form_error(request, form)
    room = services.room_create(user=request.user, name=form.cleaned_data["name"])
    return _go(request, reverse("chatrooms:room", args=[room.pk]))


@login_required
@require_POST
def room_rename(request: HttpRequest, room_id: int) -> HttpResponse:
    form = RoomNameForm(request.POST)
    if not form.is_valid():
        return _form_error(request, form)
    return _act(request, room_id, lambda: services.room_rename(user=request.user, room_id=room_id,
                                                               name=form.cleaned_data["name"]))


@login_required
@require_POST
def room_configure(request: HttpRequest, room_id: int) -> HttpResponse:
    form = RoomConfigureForm(request.POST)
    if not form.is_valid():
        return _form_error(request, form)
    return _act(request, room_id, lambda: services.room_configure(
        user=request.user, room_id=room_id, model=form.cleaned_data["model"],
        system_prompt=form.cleaned_data["system_prompt"]))


@login_required
@require_POST
def room_clear(request: HttpRequest, room_id: int) -> HttpResponse:
    return _act(request, room_id, lambda: services.room_clear(user=request.user, room_id=room_id))


@login_required
@require_POST
def room_delete(request: HttpRequest, room_id: int) -> HttpResponse:
    return _act(request, room_id, lambda: services.room_delete(user=request.user, room_id=room_id),
                then=reverse("chatrooms:home"))


def _act(request: HttpRequest, room_id: int, action, then: str | None = None) -> HttpResponse:  # noqa: ANN001
    try:
        action()
    except RoomNotFound:
        raise Http404("No such room.") from None
    except ActionRefused as refused:
        return HttpResponse(refused.message, status=403 if refused.code == "forbidden" else 400)
    return _go(request, then or reverse("chatrooms:room", args=[room_id]))


def _form_error(request: HttpRequest, form) -> HttpResponse:  # noqa: ANN001
    errors = "; ".join(f"{form.fields[f].label}: {' '.join(e)}" if f in form.fields else " ".join(e)
                       for f, e in form.errors.items())
    return HttpResponse(errors, status=400, content_type="text/plain; charset=utf-8")
