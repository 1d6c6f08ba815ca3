// Chat playground of a text-generation version: posts the conversation to the playground
// endpoint and shows the answer as it streams (Server-Sent Events: one chat.completion.chunk
// per `data:` line, `data: [DONE]` at the end). Stop aborts the request, which cancels the
// sequence on the worker; what had arrived stays in the conversation.
(function () {
  "use strict";
  const root = document.getElementById("chat");
  if (!root) return;
  const form = document.getElementById("chat-form");
  const list = document.getElementById("chat-messages");
  const input = document.getElementById("chat-input");
  const temperature = document.getElementById("chat-temperature");
  const maxTokens = document.getElementById("chat-max-tokens");
  const send = document.getElementById("chat-send");
  const stop = document.getElementById("chat-stop");
  const clear = document.getElementById("chat-clear");
  const timing = document.getElementById("chat-timing");
  const errorBox = document.getElementById("chat-error");
  const csrf = root.querySelector("[name=csrfmiddlewaretoken]").value;

  const history = []; // {role, content} sent with every request
  let controller = null;

  function bubble(role, text) {
    const empty = list.querySelector(".chat-empty");
    if (empty) empty.remove();
    const box = document.createElement("div");
    box.className = "chat-message chat-" + role;
    const label = document.createElement("span");
    label.className = "chat-role";
    label.textContent = role;
    const body = document.createElement("div");
    body.className = "chat-text";
    body.textContent = text;
    box.append(label, body);
    list.appendChild(box);
    list.scrollTop = list.scrollHeight;
    return box;
  }

  function placeholder() {
    const empty = document.createElement("p");
    empty.className = "muted chat-empty";
    empty.textContent = "No messages yet.";
    list.appendChild(empty);
  }

  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
  }

  function busy(running) {
    send.disabled = running;
    clear.disabled = running;
    stop.hidden = !running;
  }

  // The message of an error body: OpenAI's {"error": {"message"}}, or the portal's {"error": "..."}.
  function errorMessage(data, status) {
    const error = data && data.error;
    if (error && typeof error === "object" && error.message) return error.message;
    if (typeof error === "string") return error;
    return "The request failed with HTTP " + status + ".";
  }

  // Applies one SSE event (its `data:` text and `event:` name) to the answer; true at [DONE].
  function apply(event, data, answer) {
    if (data === "[DONE]") return true;
    let chunk;
    try {
      chunk = JSON.parse(data);
    } catch (e) {
      throw new Error("The stream sent something that is not JSON: " + data.slice(0, 80));
    }
    if (event === "error" || chunk.error) throw new Error(errorMessage(chunk, 500));
    const choice = (chunk.choices || [])[0];
    if (choice) {
      const piece = (choice.delta && choice.delta.content) || "";
      if (piece) {
        if (answer.firstAt === null) answer.firstAt = performance.now();
        answer.lastAt = performance.now();
        answer.text += piece;
        answer.pieces += 1;
        answer.body.textContent = answer.text;
        answer.box.dataset.chunks = String(answer.pieces);
        list.scrollTop = list.scrollHeight;
      }
      if (choice.finish_reason) answer.finish = choice.finish_reason;
    }
    if (chunk.usage) answer.usage = chunk.usage;
    return false;
  }

  async function stream(response, answer) {
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let event = "message";
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, newline).replace(/\r$/, "");
        buffer = buffer.slice(newline + 1);
        if (line === "") {
          // A blank line ends an event.
          if (data.length && apply(event, data.join("\n"), answer)) return true;
          event = "message";
          data = [];
        } else if (line.startsWith("data:")) {
          data.push(line.slice(5).replace(/^ /, ""));
        } else if (line.startsWith("event:")) {
          event = line.slice(6).trim();
        }
      }
    }
    if (data.length && apply(event, data.join("\n"), answer)) return true;
    return false;
  }

  function summary(answer, startedAt) {
    const parts = [];
    if (answer.firstAt !== null) parts.push("first token " + Math.round(answer.firstAt - startedAt) + " ms");
    parts.push(answer.pieces + " chunks");
    const tokens = answer.usage ? answer.usage.completion_tokens : answer.pieces;
    if (answer.firstAt !== null && answer.lastAt > answer.firstAt && tokens > 1) {
      parts.push(((tokens - 1) / ((answer.lastAt - answer.firstAt) / 1000)).toFixed(1) + " tokens/s");
    }
    if (answer.finish) parts.push("finish: " + answer.finish);
    return parts.join(" · ");
  }

  async function converse(text) {
    errorBox.hidden = true;
    history.push({ role: "user", content: text });
    bubble("user", text);
    const box = bubble("assistant", "");
    box.dataset.state = "streaming";
    box.dataset.chunks = "0";
    const answer = { box: box, body: box.querySelector(".chat-text"), text: "", pieces: 0,
      firstAt: null, lastAt: null, finish: null, usage: null };
    const startedAt = performance.now();
    controller = new AbortController();
    busy(true);
    timing.textContent = "waiting for the first token…";
    const body = { messages: history.slice(), temperature: Number(temperature.value) };
    if (maxTokens.value) body.max_tokens = Number(maxTokens.value);
    try {
      const response = await fetch(root.dataset.chatUrl, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "text/event-stream", "X-CSRFToken": csrf },
        body: JSON.stringify(body),
        signal: controller.signal,
      });
      const type = response.headers.get("Content-Type") || "";
      if (!response.ok || !type.startsWith("text/event-stream")) {
        let data = null;
        try { data = await response.json(); } catch (e) { data = null; }
        throw new Error(errorMessage(data, response.status));
      }
      const finished = await stream(response, answer);
      if (!finished) throw new Error("The stream ended before the answer was complete.");
      box.dataset.state = "done";
      history.push({ role: "assistant", content: answer.text });
      timing.textContent = summary(answer, startedAt);
    } catch (e) {
      const stopped = e.name === "AbortError";
      box.dataset.state = stopped ? "stopped" : "failed";
      if (answer.text) {
        // What arrived is the assistant's turn: the next message continues from it.
        history.push({ role: "assistant", content: answer.text });
      } else {
        // Nothing was generated: take the question back, to edit and send again.
        history.pop();
        box.previousElementSibling.remove();
        box.remove();
        input.value = text;
      }
      timing.textContent = stopped ? "stopped · " + summary(answer, startedAt) : "";
      if (!stopped) showError(e.message);
    } finally {
      controller = null;
      busy(false);
      if (!list.querySelector(".chat-message")) placeholder();
    }
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const text = input.value.trim();
    if (!text || controller) return;
    input.value = "";
    converse(text);
  });
  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });
  stop.addEventListener("click", function () {
    if (controller) controller.abort();
  });
  clear.addEventListener("click", function () {
    history.length = 0;
    list.replaceChildren();
    placeholder();
    timing.textContent = "";
    errorBox.hidden = true;
  });
})();
