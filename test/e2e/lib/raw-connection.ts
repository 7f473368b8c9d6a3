// A native-protocol connection without the client library, for sending what the client would
// never send (bad frames, hostile lengths). Tests wait for the frames or the close they expect
// (waitUntil), never for a fixed time.
import { connect } from 'node:net';
import { FrameDecoder, type Frame } from '../../../client/wire.ts';

export interface RawConnection {
  /** Every frame received so far, in arrival order. */
  readonly frames: Frame[];
  /** True once the server has closed the connection (or it failed). */
  readonly closed: boolean;
  write(bytes: Uint8Array): void;
  destroy(): void;
}

export function openRaw(address: string): Promise<RawConnection> {
  const i = address.lastIndexOf(':');
  const host = address.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(address.slice(i + 1));
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    const decoder = new FrameDecoder();
    const frames: Frame[] = [];
    let closed = false;
    socket.on('data', (d: Buffer) => frames.push(...decoder.push(d)));
    socket.on('close', () => (closed = true));
    socket.on('error', (e) => {
      closed = true;
      reject(e);
    });
    socket.once('connect', () =>
      resolve({
        frames,
        get closed() {
          return closed;
        },
        write: (bytes) => void socket.write(bytes),
        destroy: () => socket.destroy(),
      }),
    );
  });
}
