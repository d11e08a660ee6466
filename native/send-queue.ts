// The bytes and fds a UnixConnection has queued for its peer, and the sendmsg loop that hands
// them to the kernel.
//
// Invariants:
// - Messages leave in the order they were pushed; a message's fds ride on the first sendmsg of
//   its data (attached to its first byte), never on another message's.
// - fds pushed belong to the queue from push() on: closed right after the sendmsg that carried
//   them succeeded (the kernel holds its own references then), or by discard(); nothing else
//   closes them. Those closes happen here, on the loop (never through the closer threads).
// - `bytes` is exactly the data pushed and not yet taken by the kernel.
// - send() never blocks (sendmsg with MSG_DONTWAIT) and never throws: it stops at EAGAIN,
//   retries EINTR, and returns any other failure for the owner to act on.
// - The syscalls come from the owner (SendSyscalls), bound to its socket: this file does not
//   import the raw binding (binding.ts says who may).
import { constants } from 'node:os';

const { EAGAIN, EINTR } = constants.errno;

/** The raw syscalls the queue runs, bound by its owner to its socket. */
export interface SendSyscalls {
  /** sendmsg(MSG_DONTWAIT|MSG_NOSIGNAL) of `chunk` with `fds` as SCM_RIGHTS: bytes sent, or -errno. */
  sendmsg(chunk: Buffer, fds: number[]): number;
  /** close(2), never retried: 0 or -errno. */
  close(fd: number): number;
}

interface Outgoing {
  data: Buffer;
  offset: number;
  /** Still ours to close; emptied once sent. */
  fds: number[];
}

export class SendQueue {
  readonly #items: Outgoing[] = [];
  #bytes = 0;

  constructor(private readonly syscalls: SendSyscalls) {}

  /** Messages not (fully) sent yet. */
  get length(): number {
    return this.#items.length;
  }

  /** Bytes queued but not yet accepted by the kernel. */
  get bytes(): number {
    return this.#bytes;
  }

  /** Queues `data` (non-empty) with `fds` attached to its first byte; takes ownership of `fds`. */
  push(data: Buffer, fds: readonly number[]): void {
    this.#items.push({ data, offset: 0, fds: [...fds] });
    this.#bytes += data.length;
  }

  /**
   * Sends from the head while the kernel takes it: 'empty' once everything went, 'again' when
   * the socket is full (EAGAIN: wait for writable), or the -errno of a failed sendmsg (what
   * was not sent stays queued).
   */
  send(): 'empty' | 'again' | number {
    for (;;) {
      const head = this.#items[0];
      if (head === undefined) return 'empty';
      const chunk = head.offset === 0 ? head.data : head.data.subarray(head.offset);
      const sent = this.syscalls.sendmsg(chunk, head.fds);
      if (sent < 0) {
        if (sent === -EAGAIN) return 'again';
        if (sent === -EINTR) continue;
        return sent;
      }
      if (head.fds.length > 0) {
        for (const fd of head.fds) this.syscalls.close(fd); // the kernel holds its own references now
        head.fds = [];
      }
      head.offset += sent;
      this.#bytes -= sent;
      if (head.offset >= head.data.length) this.#items.shift();
    }
  }

  /** Drops everything queued, closing the fds not sent. */
  discard(): void {
    for (const item of this.#items.splice(0)) for (const fd of item.fds) this.syscalls.close(fd);
    this.#bytes = 0;
  }
}
