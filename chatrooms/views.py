"""Pages: sign-up, the room pages and their htmx partials. Thin: forms, services and selectors do the work."""
from __future__ import annotations

from django.conf import settings
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.http import JsonResponse
from django.utils.http import content_disposition_header
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from . import limits, selectors, services
from .attachments import attachment_to_dict
from .catalog import model_choices
from .forms import (
    RoomArchiveForm, RoomConfigureForm, RoomCreateForm, RoomMemberForm, RoomNameForm, RoomPinForm, SignupForm,
)
from .selectors import RoomNotFound
from .exports import ImportRefused, export_filename, export_json_text, export_markdown, parse_export_file
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
    sidebar = selectors.room_sidebar_for_user(user=request.user)
    if sidebar.rooms or sidebar.archived:
        return redirect("chatrooms:room", room_id=int((sidebar.rooms or sidebar.archived)[0]["id"]))
    return render(request, "chatrooms/room.html", {"rooms": [], "room": None, "create_form": RoomNameForm()})


@login_required
@require_GET
def room_detail(request: HttpRequest, room_id: int) -> HttpResponse:
    room = _room_or_404(request, room_id)
    page = selectors.message_page_for_room(room=room, before_id=None, limit=_history_limit(request, room),
                                           viewer=request.user)
    context = {
        **_sidebar_context(request),
        "room": room,
        "is_owner": room.owner_id == request.user.pk,
        "members": selectors.room_member_names(room=room),
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
    page = selectors.message_page_for_room(room=room, before_id=before, limit=PAGE_SIZE, viewer=request.user)
    return render(request, "chatrooms/room.html#older", {"room": room, "page": page})


@login_required
@require_GET
def message_detail(request: HttpRequest, room_id: int, message_id: int) -> HttpResponse:
    room = _room_or_404(request, room_id)
    message = selectors.message_get_in_room(room=room, message_id=message_id, viewer=request.user)
    if message is None:
        raise Http404("No such message.")
    return render(request, "chatrooms/room.html#message", {"message": message, "user": request.user})


@login_required
@require_http_methods(["GET", "POST"])
def message_feedback(request: HttpRequest, room_id: int, message_id: int) -> HttpResponse:
    """The thumbs and comment under an answer: POST sets them (rating "up", "down" or "none"), and
    either method answers with the `message_feedback` partial as it now stands."""
    room = _room_or_404(request, room_id)
    if selectors.message_get_in_room(room=room, message_id=message_id) is None:
        raise Http404("No such message.")
    if request.method == "POST":
        rating = request.POST.get("rating", "")
        try:
            services.message_feedback_set(user=request.user, message_id=message_id,
                                          rating=None if rating in ("", "none") else rating,
                                          comment=request.POST.get("comment", ""))
        except ActionRefused as refused:
            return HttpResponse(refused.message, status=404 if refused.code == "not_found" else 400,
                                content_type="text/plain; charset=utf-8")
        if not request.htmx:
            return redirect(reverse("chatrooms:room", args=[room.pk]) + f"#message-{message_id}")
    message = selectors.message_get_in_room(room=room, message_id=message_id, viewer=request.user)
    return render(request, "chatrooms/message_feedback.html", {"message": message})


@login_required
@require_POST
def attachment_upload(request: HttpRequest, room_id: int) -> JsonResponse:
    """A text file for the user's next message in this room (multipart field `file`): answers
    `{id, filename, mediaType, size}`, or `{error}` with 400, 404 or 413."""
    upload = request.FILES.get("file")
    if upload is None:
        return JsonResponse({"error": "Choose a file to attach (the form field `file`)."}, status=400)
    try:
        attachment = services.attachment_upload(user=request.user, room_id=room_id, filename=upload.name or "",
                                                size=upload.size or 0, read=upload.read)
    except RoomNotFound:
        return JsonResponse({"error": "No such room."}, status=404)
    except ActionRefused as refused:
        return JsonResponse({"error": refused.message}, status=413 if refused.code == "too_large" else 400)
    return JsonResponse(attachment_to_dict(attachment), status=201)


@login_required
@require_http_methods(["GET", "DELETE"])
def attachment_detail(request: HttpRequest, attachment_id: int) -> HttpResponse:
    """GET: the file, for anyone who can see its room, as a plain-text download (never rendered as
    a page). DELETE: the uploader takes back a file not sent yet."""
    if request.method == "DELETE":
        try:
            services.attachment_discard(user=request.user, attachment_id=attachment_id)
        except ActionRefused as refused:
            return JsonResponse({"error": refused.message}, status=404)
        return HttpResponse(status=204)
    attachment = selectors.attachment_get_for_user(user=request.user, attachment_id=attachment_id)
    if attachment is None:
        raise Http404("No such file.")
    response = HttpResponse(attachment.text, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = content_disposition_header(as_attachment=True, filename=attachment.filename)
    response["X-Content-Type-Options"] = "nosniff"
    response["Content-Security-Policy"] = "default-src 'none'; sandbox"
    return response


@login_required
@require_POST
def room_create(request: HttpRequest) -> HttpResponse:
    form = RoomCreateForm(request.POST)
    if not form.is_valid():
        return _form_error(request, form)
    try:
        limits.count_attempt(limits.ROOMS_CREATED, user_id=request.user.pk)
    except limits.LimitReached as reached:
        return _limit_reached(reached)
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


def _sidebar_context(request: HttpRequest) -> dict[str, object]:
    sidebar = selectors.room_sidebar_for_user(user=request.user)
    return {"rooms": sidebar.rooms, "archived_rooms": sidebar.archived}


@login_required
@require_GET
def room_members(request: HttpRequest, room_id: int) -> HttpResponse:
    """The members partial: the page re-reads it when a `rooms` frame shows that they changed."""
    room = _room_or_404(request, room_id)
    return render(request, "chatrooms/room_members.html", {
        "room": room, "is_owner": room.owner_id == request.user.pk,
        "members": selectors.room_member_names(room=room),
    })


@login_required
@require_POST
def room_share(request: HttpRequest, room_id: int) -> HttpResponse:
    form = RoomMemberForm(request.POST)
    if not form.is_valid():
        return _form_error(request, form)
    return _act(request, room_id, lambda: services.room_share(user=request.user, room_id=room_id,
                                                              username=form.cleaned_data["username"]))


@login_required
@require_POST
def room_unshare(request: HttpRequest, room_id: int) -> HttpResponse:
    form = RoomMemberForm(request.POST)
    if not form.is_valid():
        return _form_error(request, form)
    return _act(request, room_id, lambda: services.room_unshare(user=request.user, room_id=room_id,
                                                                username=form.cleaned_data["username"]))


@login_required
@require_POST
def room_pin(request: HttpRequest, room_id: int) -> HttpResponse:
    """Without JavaScript; the page's script sends `room.pin` over its socket instead."""
    form = RoomPinForm(request.POST)
    form.is_valid()  # an optional boolean is always valid
    return _act(request, room_id, lambda: services.room_pin(user=request.user, room_id=room_id,
                                                            pinned=form.cleaned_data["pinned"]))


@login_required
@require_POST
def room_archive(request: HttpRequest, room_id: int) -> HttpResponse:
    """Without JavaScript; the page's script sends `room.archive` over its socket instead."""
    form = RoomArchiveForm(request.POST)
    form.is_valid()  # an optional boolean is always valid
    return _act(request, room_id, lambda: services.room_archive(user=request.user, room_id=room_id,
                                                                archived=form.cleaned_data["archived"]))


def _act(request: HttpRequest, room_id: int, action, then: str | None = None) -> HttpResponse:  # noqa: ANN001
    try:
        action()
    except RoomNotFound:
        raise Http404("No such room.") from None
    except ActionRefused as refused:
        return HttpResponse(refused.message, status=403 if refused.code == "forbidden" else 400)
    return _go(request, then or reverse("chatrooms:room", args=[room_id]))


def _limit_reached(reached: limits.LimitReached, response: HttpResponse | None = None) -> HttpResponse:
    """429 with Retry-After: `response` (a page that says why), or the limit's message as text."""
    if response is None:
        response = HttpResponse(reached.message, content_type="text/plain; charset=utf-8")
    response.status_code = 429
    if reached.retry_after is not None:
        response["Retry-After"] = str(reached.retry_after)
    return response


def _form_error(request: HttpRequest, form) -> HttpResponse:  # noqa: ANN001
    errors = "; ".join(f"{form.fields[f].label}: {' '.join(e)}" if f in form.fields else " ".join(e)
                       for f, e in form.errors.items())
    return HttpResponse(errors, status=400, content_type="text/plain; charset=utf-8")


@login_required
@require_http_methods(["GET", "POST"])
def account_settings(request: HttpRequest) -> HttpResponse:
    """Personal API tokens: make one (its key is shown this once) and revoke them."""
    new_key, error = None, None
    if request.method == "POST":
        try:
            _token, new_key = services.api_token_create(user=request.user, name=request.POST.get("name", ""))
        except ActionRefused as refusal:
            error = refusal.message
    tokens = selectors.api_tokens_for_user(user=request.user)
    return render(request, "chatrooms/settings.html", {"tokens": tokens, "new_key": new_key, "error": error},
                  status=400 if error else 200)


@login_required
@require_POST
def api_token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    try:
        services.api_token_revoke(user=request.user, token_id=token_id)
    except ActionRefused as refusal:
        raise Http404(refusal.message) from None
    return redirect("chatrooms:settings")


# -- search, export and import -----------------------------------------------------------------

# A link to a message (a search result) opens its room from this many messages before it on.
AROUND_CONTEXT = 5


def _history_limit(request: HttpRequest, room) -> int:  # noqa: ANN001
    """PAGE_SIZE, or as many as it takes to reach the message that `?around=<id>` names."""
    try:
        target = int(request.GET["around"])
    except (KeyError, ValueError):
        return PAGE_SIZE
    needed = selectors.messages_to_reach(room=room, message_id=target, context=AROUND_CONTEXT)
    return max(PAGE_SIZE, needed or 0)


@login_required
@require_GET
def search(request: HttpRequest) -> HttpResponse:
    """htmx (the sidebar's box): the results partial, nothing for an empty box. Else the search page."""
    results = selectors.search_for_user(user=request.user, query=request.GET.get("q", ""))
    if request.htmx:
        if not results.query:
            return HttpResponse("")  # an empty region: the room list shows again
        return render(request, "chatrooms/search.html#results", {"results": results})
    return render(request, "chatrooms/search.html", {"results": results})


@login_required
@require_GET
def room_export(request: HttpRequest, room_id: int, extension: str) -> HttpResponse:
    """The room as a download: `md` (a reading copy) or `json` (what import reads)."""
    try:
        document = selectors.room_export_for_user(user=request.user, room_id=room_id)
    except RoomNotFound:
        raise Http404("No such room.") from None
    if extension == "md":
        response = HttpResponse(export_markdown(document), content_type="text/markdown; charset=utf-8")
    else:
        response = HttpResponse(export_json_text(document), content_type="application/json; charset=utf-8")
    filename = export_filename(room_name=document["room"]["name"], extension=extension)
    response["Content-Disposition"] = content_disposition_header(as_attachment=True, filename=filename)
    return response


@login_required
@require_http_methods(["GET", "POST"])
def room_import(request: HttpRequest) -> HttpResponse:
    """A JSON export becomes a new room of the user's, then its page; a refused file, the import
    page with the reason (a plain form: it works without JavaScript)."""
    if request.method == "GET":
        return render(request, "chatrooms/import.html")
    try:
        document = _uploaded_export(request)
        limits.count_attempt(limits.ROOMS_CREATED, user_id=request.user.pk)  # an import makes a room too
        room = services.room_import(user=request.user, data=document)
    except ImportRefused as refused:
        return render(request, "chatrooms/import.html", {"error": str(refused)}, status=400)
    except ActionRefused as refused:
        return render(request, "chatrooms/import.html", {"error": refused.message}, status=400)
    except limits.LimitReached as reached:
        return _limit_reached(reached, render(request, "chatrooms/import.html", {"error": reached.message}))
    return redirect("chatrooms:room", room_id=room.pk)


def _uploaded_export(request: HttpRequest) -> object:
    limit = settings.IMPORT_MAX_BYTES
    upload = request.FILES.get("file")
    if upload is None:
        raise ImportRefused("Choose a JSON export file to import.")
    if upload.size > limit:
        raise ImportRefused(f"The file is {upload.size:,} bytes; an import may be at most {limit:,} bytes.")
    return parse_export_file(upload.read())
