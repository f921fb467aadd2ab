// The on-call console's only script: live updates over server-sent events,
// the connection banner, and (once armed by a click) a sound and a browser
// notification for each new referral. It keeps nothing in browser storage,
// and the notification says only that a referral arrived and how urgent it is.
'use strict';
(function () {
  const body = document.body;
  const banner = document.getElementById('console-banner');
  const live = document.querySelector('[data-live]');
  const armButton = document.getElementById('arm');
  const armedNote = document.getElementById('armed');
  let audio = null;
  let armed = false;

  function reloadList() {
    if (!live || live.dataset.live !== 'list') return;
    fetch('/list', { credentials: 'same-origin', cache: 'no-store' })
      .then(function (r) {
        if (r.status === 401) {
          window.location.reload();
          return null;
        }
        return r.text();
      })
      .then(function (html) {
        if (html === null) return;
        const doc = new DOMParser().parseFromString('<div>' + html + '</div>', 'text/html');
        live.replaceChildren(...doc.body.firstChild.childNodes);
      })
      .catch(function () {});
  }

  function beep() {
    if (!audio) return;
    const osc = audio.createOscillator();
    const gain = audio.createGain();
    osc.frequency.value = 880;
    gain.gain.value = 0.2;
    osc.connect(gain).connect(audio.destination);
    osc.start();
    osc.stop(audio.currentTime + 0.4);
  }

  function alertNew(urgency) {
    if (!armed) return;
    beep();
    if ('Notification' in window && Notification.permission === 'granted') {
      // No personal data: the urgency and nothing else.
      new Notification(body.dataset.notifyTitle + ': ' + urgency, { body: body.dataset.notifyBody });
    }
  }

  if (armButton) {
    armButton.addEventListener('click', function () {
      armed = true;
      const Ctx = window.AudioContext || window.webkitAudioContext;
      if (Ctx && !audio) audio = new Ctx();
      if ('Notification' in window && Notification.permission === 'default') {
        Notification.requestPermission();
      }
      armButton.setAttribute('aria-pressed', 'true');
      armButton.disabled = true;
      if (armedNote) armedNote.hidden = false;
      beep();
    });
  }

  function showBanner(text) {
    if (!banner) return;
    banner.hidden = !text;
    banner.textContent = text || '';
  }

  function consoleDown(down) {
    showBanner(down ? body.dataset.consoleDown : null);
  }

  if (!window.EventSource) return;
  const events = new EventSource('/events');
  events.addEventListener('open', function () {
    consoleDown(false);
    reloadList();
  });
  events.addEventListener('error', function () {
    consoleDown(true);
  });
  events.addEventListener('referral', function (e) {
    let urgency = '';
    try {
      urgency = JSON.parse(e.data).urgency || '';
    } catch (err) {}
    alertNew(urgency);
    reloadList();
  });
  // The list reloads (it carries the broker banner); an opened referral
  // only shows or hides the banner, so what is being read never moves.
  events.addEventListener('link', function (e) {
    let up = true;
    try {
      up = JSON.parse(e.data).up;
    } catch (err) {}
    if (live && live.dataset.live === 'referral') {
      const rendered = document.getElementById('link-state');
      if (rendered) rendered.hidden = up;
      showBanner(up ? null : body.dataset.brokerDown);
    } else {
      reloadList();
    }
  });
  events.addEventListener('changed', function () {
    if (!live || live.dataset.live !== 'referral') reloadList();
  });
  events.addEventListener('settled', function (e) {
    let id = '';
    try {
      id = JSON.parse(e.data).message_id || '';
    } catch (err) {}
    if (live && live.dataset.live === 'referral') {
      if (live.dataset.messageId === id) window.location.reload();
    } else {
      reloadList();
    }
  });
})();
