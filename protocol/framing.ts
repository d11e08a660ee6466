// Varlink framing: each message is UTF-8 JSON followed by one NUL byte, on a Unix stream socket.
// Pure: no I/O; the shell reads chunks (with recvmsg) and pushes them here.
//
// Invariants:
// - Every fd pushed ends up in exactly one place: in a Frame returned by push() (the caller
//   then owns it) or in takeHeldFds() (the caller closes it). Nothing is dropped, even when
//   push() throws. Until then the decoder holds the fds (it never closes anything: no I/O).
// - fds that arrive with a chunk belong to the message that holds the chunk's LAST byte. That is
//   what a Unix stream recvmsg delivers (pinned by test/native/binding.test.ts): it glues
//   fd-less messages together and stops right after the first piece of a message that carries
//   fds, handing over that message's fds with it. A client sends each fd-carrying message with
//   one sendmsg, so its fds arrive with its first bytes, at the end of some read.
// - A frame is at most `maxFrameBytes` bytes without its NUL (exactly the cap is accepted) and
//   carries at most `maxFdsPerFrame` fds; the cap is enforced as soon as the buffered bytes of an
//   unfinished frame pass it, not when its NUL finally arrives.
// - Linear time: each pushed byte is scanned for NUL once; an unfinished frame is kept as a list
//   of pieces and joined once, when its NUL arrives.
// - After a FramingError the decoder stays failed: every later push() throws, and fds pushed to
//   it go to takeHeldFds(). The stream cannot be resynchronised; the connection must close.
// - Frame bytes are copies: the caller may reuse a chunk's buffer after push() returns.

/** Largest request frame, in bytes without the NUL. */
export const MAX_FRAME_BYTES = 64 * 1024;
/** Most fds one request may carry (the kernel's SCM_MAX_FD is 253; no method needs more than 1). */
export const MAX_FDS_PER_FRAME = 4;
/**
 * Largest reply frame a client should accept. Replies (List, Status) can be larger than any
 * request; the daemon never sends more than this (encodeFrame refuses).
 */
export const MAX_REPLY_FRAME_BYTES = 8 * 1024 * 1024;

export interface Frame {
  /** The JSON bytes, without the terminating NUL. */
  bytes: Buffer;
  /** fds that came with this message, in arrival order; owned by whoever received the Frame. */
  fds: number[];
}

export type FramingProblem = 'frame-too-large' | 'too-many-fds' | 'decoder-failed';

/** The byte stream broke a framing rule; the connection cannot continue. */
export class FramingError extends Error {
  readonly problem: FramingProblem;
  constructor(problem: FramingProblem, message: string) {
    super(message);
    this.name = 'FramingError';
    this.problem = problem;
  }
}

export interface FrameLimits {
  maxFrameBytes: number;
  maxFdsPerFrame: number;
}

export class FrameDecoder {
  readonly limits: FrameLimits;
  /** Pieces of the unfinished frame (copies), and their total length. */
  private pieces: Buffer[] = [];
  private pieceBytes = 0;
  /** fds of the unfinished frame. Owner: this decoder until handed out. */
  private pendingFds: number[] = [];
  /** fds handed to the decoder after it failed, or of frames lost to the failure. Owner: this decoder. */
  private orphanFds: number[] = [];
  private failure: FramingError | undefined;

  constructor(limits: Partial<FrameLimits> = {}) {
    this.limits = {
      maxFrameBytes: limits.maxFrameBytes ?? MAX_FRAME_BYTES,
      maxFdsPerFrame: limits.maxFdsPerFrame ?? MAX_FDS_PER_FRAME,
    };
    for (const [key, value] of Object.entries(this.limits)) {
      if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`FrameDecoder: ${key} must be a non-negative integer, got ${value}`);
    }
  }

  /** True while bytes of an unfinished frame are buffered (EOF now means a truncated message). */
  get hasPartialFrame(): boolean {
    return this.pieceBytes > 0;
  }

  /** Whether a FramingError has ended this decoder. */
  get failed(): boolean {
    return this.failure !== undefined;
  }

  /**
   * Feeds one chunk and the fds that arrived with it (ownership passes to the decoder).
   * Returns the frames completed by this chunk; throws FramingError when a limit is broken,
   * after which takeHeldFds() returns every fd not handed out in a returned Frame.
   */
  push(chunk: Buffer, fds: readonly number[]): Frame[] {
    if (this.failure !== undefined) {
      this.orphanFds.push(...fds);
      throw new FramingError('decoder-failed', `the stream already broke a framing rule: ${this.failure.message}`);
    }
    const frames: Frame[] = [];
    let fdsTaken = false;
    // The chunk's fds join the frame that holds its last byte: taken just before that frame
    // completes (the chunk ends with its NUL), or after the loop (it ends inside a frame).
    const takeChunkFds = (): void => {
      fdsTaken = true;
      this.pendingFds.push(...fds);
      this.checkFdCount();
    };
    try {
      let start = 0;
      for (;;) {
        const nul = chunk.indexOf(0, start);
        if (nul === -1) break;
        if (nul === chunk.length - 1) takeChunkFds();
        frames.push(this.finishFrame(chunk.subarray(start, nul)));
        start = nul + 1;
      }
      if (!fdsTaken) takeChunkFds();
      if (start < chunk.length) this.addPiece(chunk.subarray(start));
      return frames;
    } catch (error) {
      if (!(error instanceof FramingError)) throw error;
      // Frames completed by this chunk are never returned: their fds must not be lost.
      for (const frame of frames) this.orphanFds.push(...frame.fds);
      if (!fdsTaken) this.orphanFds.push(...fds);
      this.failure = error;
      throw error;
    }
  }

  /**
   * Gives up every fd the decoder holds (an unfinished frame's, or anything left after a
   * FramingError); the caller must close them. Call it on EOF and on FramingError.
   */
  takeHeldFds(): number[] {
    const held = [...this.orphanFds, ...this.pendingFds];
    this.orphanFds = [];
    this.pendingFds = [];
    return held;
  }

  private checkFdCount(): void {
    if (this.pendingFds.length > this.limits.maxFdsPerFrame) {
      throw new FramingError('too-many-fds',
        `a message carried ${this.pendingFds.length} fds; at most ${this.limits.maxFdsPerFrame} are accepted`);
    }
  }

  private checkSize(bytes: number): void {
    if (bytes > this.limits.maxFrameBytes) {
      throw new FramingError('frame-too-large',
        `a message is longer than ${this.limits.maxFrameBytes} bytes (${bytes} bytes without its NUL terminator so far)`);
    }
  }

  private addPiece(piece: Buffer): void {
    this.checkSize(this.pieceBytes + piece.length);
    this.pieces.push(Buffer.from(piece));
    this.pieceBytes += piece.length;
  }

  private finishFrame(tail: Buffer): Frame {
    const length = this.pieceBytes + tail.length;
    this.checkSize(length);
    const bytes = Buffer.concat([...this.pieces, tail], length);
    const frame: Frame = { bytes, fds: this.pendingFds };
    this.pieces = [];
    this.pieceBytes = 0;
    this.pendingFds = [];
    return frame;
  }
}

/**
 * One message on the wire: JSON followed by NUL. JSON.stringify escapes U+0000, so the only NUL
 * is the terminator. Throws if the value has no JSON form or the frame would exceed maxBytes
 * (a daemon bug, never a peer's fault).
 */
export function encodeFrame(value: unknown, maxBytes: number = MAX_REPLY_FRAME_BYTES): Buffer {
  const json: unknown = JSON.stringify(value);
  if (typeof json !== 'string') throw new TypeError('encodeFrame: the value has no JSON representation');
  const length = Buffer.byteLength(json, 'utf8');
  if (length > maxBytes) {
    throw new FramingError('frame-too-large', `refusing to send a ${length}-byte message; the limit is ${maxBytes} bytes`);
  }
  const frame = Buffer.allocUnsafe(length + 1);
  frame.write(json, 0, length, 'utf8');
  frame[length] = 0;
  return frame;
}
