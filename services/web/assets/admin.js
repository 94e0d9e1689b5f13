// The owner's pages: the Files page uploads files and folders (one PUT for all the files picked,
// streamed by the browser, one snapshot; a progress bar); the Storage page follows the
// pairing window live (no reload), and the invitation page copies its code. No inline script
// anywhere (the CSP forbids it).
'use strict';
(function () {
  var upload = document.getElementById('upload');
  if (upload) {
    var bar = document.getElementById('upload-progress');
    var status = document.getElementById('upload-status');
    var dir = upload.dataset.dir;
    // All the files picked go in one body (each a line of JSON, then its bytes; the Blob refers
    // to the files, nothing is read into memory here), so they become one snapshot.
    var send = function (list) {
      var files = Array.prototype.slice.call(list);
      var parts = [];
      files.forEach(function (f) {
        var name = f.webkitRelativePath || f.name;
        parts.push(JSON.stringify({ path: name, size: f.size, mtime: f.lastModified }) + '\n', f);
      });
      var body = new Blob(parts);
      bar.hidden = false;
      bar.value = 0;
      status.className = '';
      status.textContent = 'Uploading ' + files.length + ' file(s)…';
      var xhr = new XMLHttpRequest();
      xhr.open('PUT', '/admin/files/folder?dir=' + encodeURIComponent(dir));
      xhr.setRequestHeader('X-CSRF-Token', upload.dataset.csrf);
      xhr.setRequestHeader('Content-Type', 'application/x-cairn-files');
      xhr.upload.onprogress = function (e) {
        bar.value = e.loaded / (body.size || 1);
      };
      xhr.onload = function () {
        var a = {};
        try { a = JSON.parse(xhr.responseText); } catch (e) { a = { error: xhr.statusText }; }
        if (xhr.status !== 200 || !a.ok) {
          status.textContent = a.error || ('The upload failed (' + xhr.status + ').');
          status.className = 'error';
          return;
        }
        status.textContent = 'Stored ' + a.files + ' file(s) in snapshot ' + a.snapshot + '.';
        location.reload();
      };
      xhr.onerror = function () {
        status.textContent = 'The connection broke; nothing of this upload was stored.';
        status.className = 'error';
      };
      xhr.send(body);
    };
    ['pick-files', 'pick-folder'].forEach(function (id) {
      var input = document.getElementById(id);
      input.addEventListener('change', function () { if (input.files.length) { send(input.files); } });
    });
  }

  var copy = document.getElementById('copy');
  var code = document.getElementById('invitation');
  if (copy && code && navigator.clipboard) {
    copy.hidden = false;
    copy.addEventListener('click', function () {
      navigator.clipboard.writeText(code.value).then(function () { copy.textContent = 'Copied'; });
    });
  }

  var site = document.getElementById('site-upload');
  if (site) {
    var pick = document.getElementById('pick-site');
    var said = document.getElementById('site-status');
    pick.addEventListener('change', function () {
      if (!pick.files.length) { return; }
      said.textContent = 'Uploading the site…';
      said.className = '';
      var xhr = new XMLHttpRequest();
      xhr.open('PUT', '/admin/site/zip');
      xhr.setRequestHeader('X-CSRF-Token', site.dataset.csrf);
      xhr.onload = function () {
        var a = {};
        try { a = JSON.parse(xhr.responseText); } catch (e) { a = { error: xhr.statusText }; }
        if (xhr.status === 200 && a.ok) {
          said.textContent = 'Your site is served: ' + a.files + ' files.';
        } else {
          said.textContent = a.error || ('The upload failed (' + xhr.status + ').');
          said.className = 'error';
        }
      };
      xhr.onerror = function () {
        said.textContent = 'The connection broke; the site is as it was.';
        said.className = 'error';
      };
      xhr.send(pick.files[0]);
    });
  }

  var update = document.getElementById('update-upload');
  if (update) {
    var bundle = document.getElementById('pick-update');
    var told = document.getElementById('update-status');
    var bar = document.getElementById('update-progress');
    bundle.addEventListener('change', function () {
      if (!bundle.files.length) { return; }
      told.textContent = 'Sending the update; it is checked as it arrives…';
      told.className = '';
      bar.hidden = false;
      bar.value = 0;
      var xhr = new XMLHttpRequest();
      xhr.open('PUT', '/admin/update');
      xhr.setRequestHeader('X-CSRF-Token', update.dataset.csrf);
      xhr.upload.onprogress = function (e) {
        if (e.lengthComputable) { bar.value = e.loaded / e.total; }
        if (e.loaded === e.total) { told.textContent = 'Reading the written system back…'; }
      };
      xhr.onload = function () {
        bar.hidden = true;
        var a = {};
        try { a = JSON.parse(xhr.responseText); } catch (e) { a = { error: xhr.statusText }; }
        if (xhr.status === 200 && a.ok) {
          told.textContent = a.message;
        } else {
          told.textContent = 'Not installed: ' + (a.error || ('the upload failed (' + xhr.status + ')'));
          told.className = 'error';
        }
      };
      xhr.onerror = function () {
        bar.hidden = true;
        told.textContent = 'The connection broke; nothing was installed.';
        told.className = 'error';
      };
      xhr.send(bundle.files[0]);
    });
  }

  var pairing = document.getElementById('pairing');
  if (!pairing || !pairing.dataset.follow) {
    return;
  }
  function follow() {
    fetch('/admin/api/storage', { credentials: 'same-origin' })
      .then(function (r) { return r.json(); })
      .then(function (a) {
        var left = a.window && Math.ceil(a.window.remaining_ms / 1000);
        if (a.window && a.pairing && !a.pairing.busy && a.pairing.last) {
          // The attempt ended unpaired; the window stays open for another.
          pairing.textContent = 'Last pairing: ' + a.pairing.last + '. The window is open for ' +
            left + ' s more: click Pair or press the button to try again.';
          setTimeout(follow, 1000);
        } else if (a.window) {
          pairing.textContent = 'The pairing window is open for ' + left +
            ' s: press the button on the other plug now.';
          setTimeout(follow, 1000);
        } else if (a.pairing && a.pairing.busy) {
          pairing.textContent = 'Finishing the pairing…';
          setTimeout(follow, 1000);
        } else {
          // Over: the page shows the new partner list and the outcome.
          location.reload();
        }
      })
      .catch(function () { setTimeout(follow, 2000); });
  }
  follow();
})();
