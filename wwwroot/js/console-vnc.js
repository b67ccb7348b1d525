import RFB from '/lib/novnc/core/rfb.js';
import KeyTable from '/lib/novnc/core/input/keysym.js';
import keysyms from '/lib/novnc/core/input/keysymdef.js';
import { vmId, setStatus, fetchTicket, vmState, Reconnector } from '/js/console-common.js';

const screen = document.getElementById('screen');
const scale = document.getElementById('scale');
const viewOnly = document.getElementById('view-only');
let rfb = null;
let closing = false;

document.getElementById('serial-link').href = `/vms/${encodeURIComponent(vmId)}/serial`;

const reconnector = new Reconnector(connect);

async function connect() {
    if (rfb) return;
    setStatus('connecting', 'Requesting a console ticket…');
    let url;
    try {
        url = await fetchTicket('vnc');
    } catch (e) {
        reconnector.schedule(e.status === 409 ? `${e.message}` : `Could not get a ticket: ${e.message}.`);
        return;
    }
    setStatus('connecting', 'Connecting…');
    rfb = new RFB(screen, url, { shared: true, wsProtocols: ['binary'] });
    rfb.scaleViewport = scale.checked;
    rfb.viewOnly = viewOnly.checked;
    rfb.focusOnClick = true;
    rfb.addEventListener('connect', () => {
        reconnector.reset();
        setStatus('connected', 'Connected');
        rfb.focus();
    });
    rfb.addEventListener('desktopname', e => { document.title = e.detail.name; });
    rfb.addEventListener('disconnect', async e => {
        rfb = null;
        if (closing) return;
        const state = await vmState();
        const why = state && state !== 'running' && state !== 'paused'
            ? `The VM is ${state}.`
            : e.detail.clean ? 'The console connection closed.' : 'The console connection was lost.';
        reconnector.schedule(why);
    });
    rfb.addEventListener('securityfailure', e => setStatus('error', `Security failure: ${e.detail.reason ?? e.detail.status}`));
}

scale.addEventListener('change', () => { if (rfb) rfb.scaleViewport = scale.checked; });
viewOnly.addEventListener('change', () => { if (rfb) rfb.viewOnly = viewOnly.checked; });
document.getElementById('fullscreen').addEventListener('click', () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else document.documentElement.requestFullscreen().catch(() => {});
});
document.getElementById('reconnect').addEventListener('click', () => {
    if (rfb) { rfb.disconnect(); } else { reconnector.reset(); reconnector.now(); }
});

// Combos go as physical keys (scan codes): the guest's layout then decides what they mean.
const K = KeyTable;
const combos = {
    cad: [[K.XK_Control_L, 'ControlLeft'], [K.XK_Alt_L, 'AltLeft'], [K.XK_Delete, 'Delete']],
    cab: [[K.XK_Control_L, 'ControlLeft'], [K.XK_Alt_L, 'AltLeft'], [K.XK_BackSpace, 'Backspace']],
    caf1: [[K.XK_Control_L, 'ControlLeft'], [K.XK_Alt_L, 'AltLeft'], [K.XK_F1, 'F1']],
    caf2: [[K.XK_Control_L, 'ControlLeft'], [K.XK_Alt_L, 'AltLeft'], [K.XK_F2, 'F2']],
    caf7: [[K.XK_Control_L, 'ControlLeft'], [K.XK_Alt_L, 'AltLeft'], [K.XK_F7, 'F7']],
    at: [[K.XK_Alt_L, 'AltLeft'], [K.XK_Tab, 'Tab']],
    af4: [[K.XK_Alt_L, 'AltLeft'], [K.XK_F4, 'F4']],
    esc: [[K.XK_Escape, 'Escape']],
    super: [[K.XK_Super_L, 'MetaLeft']],
    prt: [[K.XK_Print, 'PrintScreen']],
};
const combo = document.getElementById('combo');
combo.addEventListener('change', () => {
    const keys = combos[combo.value];
    combo.value = '';
    if (!rfb || !keys) return;
    for (const [sym, code] of keys) rfb.sendKey(sym, code, true);
    for (const [sym, code] of [...keys].reverse()) rfb.sendKey(sym, code, false);
    rfb.focus();
});

// Paste as typing: each character becomes the key presses a US keyboard would make, Shift included,
// because QEMU maps plain keysyms without pressing Shift for the guest.
const plain = { '-': 'Minus', '=': 'Equal', '[': 'BracketLeft', ']': 'BracketRight', '\\': 'Backslash', ';': 'Semicolon',
    "'": 'Quote', '`': 'Backquote', ',': 'Comma', '.': 'Period', '/': 'Slash', ' ': 'Space' };
const shifted = { '!': 'Digit1', '@': 'Digit2', '#': 'Digit3', '$': 'Digit4', '%': 'Digit5', '^': 'Digit6', '&': 'Digit7',
    '*': 'Digit8', '(': 'Digit9', ')': 'Digit0', '_': 'Minus', '+': 'Equal', '{': 'BracketLeft', '}': 'BracketRight',
    '|': 'Backslash', ':': 'Semicolon', '"': 'Quote', '~': 'Backquote', '<': 'Comma', '>': 'Period', '?': 'Slash' };

function keyFor(ch) {
    if (ch === '\n') return { sym: K.XK_Return, code: 'Enter', shift: false };
    if (ch === '\t') return { sym: K.XK_Tab, code: 'Tab', shift: false };
    if (/[a-z]/.test(ch)) return { sym: ch.charCodeAt(0), code: 'Key' + ch.toUpperCase(), shift: false };
    if (/[A-Z]/.test(ch)) return { sym: ch.charCodeAt(0), code: 'Key' + ch, shift: true };
    if (/[0-9]/.test(ch)) return { sym: ch.charCodeAt(0), code: 'Digit' + ch, shift: false };
    if (ch in plain) return { sym: ch.charCodeAt(0), code: plain[ch], shift: false };
    if (ch in shifted) return { sym: ch.charCodeAt(0), code: shifted[ch], shift: true };
    return { sym: keysyms.lookup(ch.codePointAt(0)), code: null, shift: false };
}

const sleep = ms => new Promise(r => setTimeout(r, ms));

export async function typeText(text) {
    for (const ch of text.replace(/\r\n?/g, '\n')) {
        if (!rfb) return;
        const k = keyFor(ch);
        if (k.shift) rfb.sendKey(K.XK_Shift_L, 'ShiftLeft', true);
        rfb.sendKey(k.sym, k.code);
        if (k.shift) rfb.sendKey(K.XK_Shift_L, 'ShiftLeft', false);
        await sleep(8); // the guest's keyboard buffer is small
    }
}

const dialog = document.getElementById('paste-dialog');
const pasteText = document.getElementById('paste-text');
document.getElementById('paste').addEventListener('click', async () => {
    try { pasteText.value = await navigator.clipboard.readText(); } catch { /* no permission: the user pastes into the box */ }
    dialog.showModal();
});
dialog.addEventListener('close', async () => {
    if (dialog.returnValue === 'type' && pasteText.value) await typeText(pasteText.value);
    rfb?.focus();
});

window.addEventListener('pagehide', () => { closing = true; rfb?.disconnect(); });
window.applianceConsole = { typeText, get rfb() { return rfb; } };

vmState();
connect();
