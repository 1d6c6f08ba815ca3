"""Browser pages of batch jobs: thin views over the jobs services."""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from core.errors import NotFound, PortalError
from inference import jobs
from inference.forms import BatchJobForm
from inference.models import BatchJob, JobStatus


def _job_or_404(request: HttpRequest, job_id: uuid.UUID) -> BatchJob:
    try:
        return jobs.job_get(request.user, job_id)
    except NotFound as exc:
        raise Http404(exc.message) from None


@login_required
def job_list(request: HttpRequest) -> HttpResponse:
    """The user's jobs (staff: everyone's), newest first, with live progress."""
    queryset = jobs.jobs_visible_to(request.user)
    status = request.GET.get("status", "")
    if status:
        queryset = queryset.filter(status=status)
    page = Paginator(queryset, 25).get_page(request.GET.get("page"))
    context = {"page": page, "status": status, "statuses": JobStatus.values}
    return render(request, "inference/job_list.html", context)


@login_required
def job_create(request: HttpRequest) -> HttpResponse:
    """Submit a file of inputs; on success the job's page shows its progress."""
    initial = {"model": request.GET.get("model", "")}
    form = BatchJobForm(request.user, request.POST or None, request.FILES or None, initial=initial)
    status = 200
    if request.method == "POST":
        if form.is_valid():
            data = form.cleaned_data
            try:
                job = jobs.job_submit(
                    actor=request.user,
                    model_name=data["model"],
                    file=data["file"],
                    filename=data["file"].name,
                    version=data["version"],
                    alias=data["alias"] or None,
                    result_format=data["result_format"] or None,
                    chunk_size=data["chunk_size"],
                    max_tokens=data["max_tokens"],
                    temperature=data["temperature"],
                )
            except PortalError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.message)
                status = exc.status_code
            else:
                # The job page shows its live status: a "queued" flash would outlive it.
                return redirect("inference:job-detail", job_id=job.pk)
        else:
            status = 400
    return render(request, "inference/job_create.html", {"form": form}, status=status)


@login_required
def job_detail(request: HttpRequest, job_id: uuid.UUID) -> HttpResponse:
    job = _job_or_404(request, job_id)
    context = {
        "job": job,
        "api_url": reverse("api:job-detail", args=[job.pk]),
        "result_url": reverse("api:job-result", args=[job.pk]),
        "generates": jobs.job_generates(job),
    }
    return render(request, "inference/job_detail.html", context)


@login_required
@require_POST
def job_action(request: HttpRequest, job_id: uuid.UUID, action: str) -> HttpResponse:
    """Cancel or delete a job from a button."""
    job = _job_or_404(request, job_id)
    try:
        if action == "cancel":
            job = jobs.job_cancel(actor=request.user, job=job)
            messages.success(request, f"Job {job.short_id} {'cancelled' if not job.is_active else 'is stopping'}.")
        elif action == "delete":
            jobs.job_delete(actor=request.user, job=job)
            messages.success(request, f"Job {job.short_id} and its files were deleted.")
            return redirect("inference:job-list")
        else:
            raise Http404(f"Unknown action {action!r}.")
    except PortalError as exc:
        messages.error(request, exc.message)
    return redirect("inference:job-detail", job_id=job.pk)
