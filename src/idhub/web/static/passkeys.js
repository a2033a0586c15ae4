// Passkey ceremonies for the login and account pages. A button with `data-passkey-options`
// asks that URL (POST, with the form's CSRF token and pending login) for WebAuthn options,
// runs navigator.credentials.get/create, and submits its form with the answer in `answer`
// and the ceremony's `handle`. Nothing here talks to any other site.
(function () {
  "use strict";

  function b64urlToBuffer(value) {
    const base64 = value.replace(/-/g, "+").replace(/_/g, "/");
    const padded = base64 + "===".slice((base64.length + 3) % 4);
    const bytes = atob(padded);
    const out = new Uint8Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) out[i] = bytes.charCodeAt(i);
    return out.buffer;
  }

  function creationOptions(json) {
    if (PublicKeyCredential.parseCreationOptionsFromJSON) {
      return PublicKeyCredential.parseCreationOptionsFromJSON(json);
    }
    json.challenge = b64urlToBuffer(json.challenge);
    json.user.id = b64urlToBuffer(json.user.id);
    (json.excludeCredentials || []).forEach(function (c) { c.id = b64urlToBuffer(c.id); });
    return json;
  }

  function requestOptions(json) {
    if (PublicKeyCredential.parseRequestOptionsFromJSON) {
      return PublicKeyCredential.parseRequestOptionsFromJSON(json);
    }
    json.challenge = b64urlToBuffer(json.challenge);
    (json.allowCredentials || []).forEach(function (c) { c.id = b64urlToBuffer(c.id); });
    return json;
  }

  async function run(button) {
    const form = button.form;
    const body = new URLSearchParams();
    ["csrf_token", "pending"].forEach(function (name) {
      if (form.elements[name]) body.append(name, form.elements[name].value);
    });
    const reply = await fetch(button.dataset.passkeyOptions, {
      method: "POST", body: body, credentials: "same-origin",
    });
    if (!reply.ok) throw new Error("options " + reply.status);
    const ceremony = await reply.json();
    const credential = button.dataset.passkeyCeremony === "create"
      ? await navigator.credentials.create({ publicKey: creationOptions(ceremony.publicKey) })
      : await navigator.credentials.get({ publicKey: requestOptions(ceremony.publicKey) });
    form.elements.handle.value = ceremony.handle;
    form.elements.answer.value = JSON.stringify(credential.toJSON());
    if (form.elements.method) form.elements.method.value = "passkey";
    form.submit();
  }

  document.querySelectorAll("[data-passkey-options]").forEach(function (button) {
    if (!window.PublicKeyCredential) { button.hidden = true; return; }
    button.addEventListener("click", function (event) {
      event.preventDefault();
      button.disabled = true;
      run(button).catch(function () {
        button.disabled = false;
        const note = document.getElementById("passkey-error");
        if (note) note.hidden = false;
      });
    });
  });
})();
