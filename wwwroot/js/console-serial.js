import { Terminal } from '/lib/xterm/xterm.mjs';
import { FitAddon } from '/lib/xterm/addon-fit.mjs';
import { vmId, setStatus, fetchTicket, vmState, Reconnector } from '/js/console-common.js';

document.getElementById('vnc-link').href = `/vms/${encodeURIComponent(vmId)}/console`;

const term = new Terminal({ cursorBlink: true, scrollback: 5000, convertEol: false, fontSize: 14 });
const fit = new FitAddon();
term.loadAddon(fit);
term.open(document.getElementById('terminal'));
fit.fit();
new ResizeObserver(() => fit.fit()).observe(document.getElementById('terminal'));

const encoder = new TextEncoder();
let ws = null;
let closing = false;
const reconnector = new Reconnector(connect);

term.onData(d => { if (ws?.readyState === WebSocket.OPEN) ws.send(encoder.encode(d)); });

async function connect() {
    if (ws) return;
    setStatus('connecting', 'Requesting a console ticket…');
    let url;
    try {
        url = await fetchTicket('serial');
    } catch (e) {
        reconnector.schedule(e.status === 409 ? e.message : `Could not get a ticket: ${e.message}.`);
        return;
    }
    setStatus('connecting', 'Connecting…');
    const sock = new WebSocket(url);
    sock.binaryType = 'arraybuffer';
    ws = sock;
    sock.onopen = () => {
        reconnector.reset();
        setStatus('connected', 'Connected');
        term.reset();
        term.focus();
    };
    sock.onmessage = e => term.write(typeof e.data === 'string' ? e.data : new Uint8Array(e.data));
    sock.onclose = async e => {
        ws = null;
        if (closing) return;
        const state = await vmState();
        const why = state && state !== 'running' && state !== 'paused' ? `The VM is ${state}.` : (e.reason || 'The serial connection closed.');
        reconnector.schedule(why);
    };
}

document.getElementById('reconnect').addEventListener('click', () => {
    if (ws) ws.close(); else { reconnector.reset(); reconnector.now(); }
});
window.addEventListener('pagehide', () => { closing = true; ws?.close(); });
window.applianceSerial = { term };

vmState();
connect();
