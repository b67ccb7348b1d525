// Shared by the console pages: which VM, ticket minting, status line and reconnect back-off.

export const vmId = decodeURIComponent(location.pathname.split('/')[2] ?? '');

export function setStatus(state, text) {
    document.body.dataset.state = state;
    document.getElementById('status').textContent = text;
}

/** A one-time ticket; throws with the problem's detail (and status) when the API refuses. */
export async function fetchTicket(kind) {
    // Cookie-authenticated unsafe calls need the antiforgery token in a header.
    const csrf = await (await fetch('/api/v1/auth/csrf', { credentials: 'same-origin' })).json();
    const r = await fetch(`/api/v1/vms/${encodeURIComponent(vmId)}/console?kind=${kind}`,
        { method: 'POST', credentials: 'same-origin', headers: { [csrf.headerName]: csrf.token } });
    if (!r.ok) {
        let detail = `HTTP ${r.status}`;
        try { detail = (await r.json()).detail ?? detail; } catch { /* not a problem document */ }
        const e = new Error(detail);
        e.status = r.status;
        throw e;
    }
    const t = await r.json();
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + t.url;
}

export async function vmState() {
    try {
        const r = await fetch(`/api/v1/vms/${encodeURIComponent(vmId)}`, { credentials: 'same-origin' });
        if (!r.ok) return null;
        const vm = await r.json();
        document.getElementById('vm-name').textContent = vm.name ?? vmId;
        return vm.state ?? null;
    } catch { return null; }
}

/** Retries `connect` after failures with growing delays (1, 2, 4, 8, 10 s ...) until it succeeds or is reset. */
export class Reconnector {
    constructor(connect) { this.connect = connect; this.attempt = 0; this.timer = 0; }
    reset() { this.attempt = 0; clearTimeout(this.timer); }
    now() { clearTimeout(this.timer); this.connect(); }
    schedule(why) {
        clearTimeout(this.timer);
        const delay = Math.min(10, 2 ** this.attempt++);
        setStatus('waiting', `${why} Reconnecting in ${delay} s…`);
        this.timer = setTimeout(() => this.connect(), delay * 1000);
    }
}
