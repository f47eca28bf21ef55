// The browser side of the console's passkey ceremonies (WebAuthn). A button marked
// data-passkey="create" or "get" carries the server's options as JSON in data-options; on a
// click this asks the browser's authenticator, writes its answer as JSON into the form's hidden
// field (credential or assertion) and submits the form (unless data-submit="no": then the
// answer goes with the form when the person submits it). The server checks everything; this file
// only translates between JSON and the ArrayBuffers the WebAuthn API takes. Served from the
// console itself: the Content-Security-Policy allows no inline script and no eval.
(function () {
  "use strict";

  function bytes(base64url) {
    var base64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
    while (base64.length % 4) {
      base64 += "=";
    }
    var text = atob(base64);
    var out = new Uint8Array(text.length);
    for (var i = 0; i < text.length; i++) {
      out[i] = text.charCodeAt(i);
    }
    return out.buffer;
  }

  function base64url(buffer) {
    var view = new Uint8Array(buffer);
    var text = "";
    for (var i = 0; i < view.length; i++) {
      text += String.fromCharCode(view[i]);
    }
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  function creationOptions(json) {
    var o = json.publicKey;
    o.challenge = bytes(o.challenge);
    o.user.id = bytes(o.user.id);
    (o.excludeCredentials || []).forEach(function (c) { c.id = bytes(c.id); });
    return { publicKey: o };
  }

  function requestOptions(json) {
    var o = json.publicKey;
    o.challenge = bytes(o.challenge);
    (o.allowCredentials || []).forEach(function (c) { c.id = bytes(c.id); });
    return { publicKey: o };
  }

  function registration(credential) {
    var r = credential.response;
    return {
      id: credential.id,
      rawId: base64url(credential.rawId),
      type: credential.type,
      response: {
        attestationObject: base64url(r.attestationObject),
        clientDataJSON: base64url(r.clientDataJSON),
        transports: typeof r.getTransports === "function" ? r.getTransports() : undefined
      },
      extensions: credential.getClientExtensionResults()
    };
  }

  function assertion(credential) {
    var r = credential.response;
    return {
      id: credential.id,
      rawId: base64url(credential.rawId),
      type: credential.type,
      response: {
        authenticatorData: base64url(r.authenticatorData),
        clientDataJSON: base64url(r.clientDataJSON),
        signature: base64url(r.signature),
        userHandle: r.userHandle ? base64url(r.userHandle) : null
      },
      extensions: credential.getClientExtensionResults()
    };
  }

  function start(button) {
    var form = button.form;
    var mode = button.getAttribute("data-passkey");
    var status = form.querySelector("[role=status]");
    function say(text) {
      if (status) {
        status.textContent = text;
      }
    }
    if (!window.PublicKeyCredential || !navigator.credentials) {
      say("This browser cannot use passkeys; use the code from your authenticator app.");
      return;
    }
    button.hidden = false;
    button.addEventListener("click", function () {
      var json = JSON.parse(button.getAttribute("data-options"));
      button.disabled = true;
      say("Follow the prompt on your device.");
      var asked = mode === "create"
        ? navigator.credentials.create(creationOptions(json)).then(function (c) {
            form.querySelector("input[name=credential]").value = JSON.stringify(registration(c));
          })
        : navigator.credentials.get(requestOptions(json)).then(function (c) {
            form.querySelector("input[name=assertion]").value = JSON.stringify(assertion(c));
          });
      asked.then(function () {
        if (button.getAttribute("data-submit") === "no") {
          button.hidden = true;
          say("Passkey ready: it is saved with the rest of the form.");
          return;
        }
        say("Checking…");
        form.submit();
      }, function (e) {
        button.disabled = false;
        say("The passkey was not used (" + e.name + "): try again, or use the code from your authenticator app.");
      });
    });
  }

  document.querySelectorAll("[data-passkey]").forEach(start);
})();
