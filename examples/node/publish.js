#!/usr/bin/env node
/*
 * publish.js - publishes one payq `payment.create` command the way the wire
 * contract (CONTRACT.md, README "The contract") asks, and waits for the
 * worker's reply.
 *
 *   AMQP_URL=amqp://payq:payq@127.0.0.1:5673 node publish.js [BODY]
 *
 * BODY is the command's JSON object; without it a card payment of 12.50 USD
 * to the merchant account "shop" is sent. Prints the reply on stdout and
 * exits like payq-publish --wait: 0 succeeded/authorized, 1 failed (a business
 * refusal), 2 usage, 3 rejected, 4 no reply in time (PAYQ_TIMEOUT seconds,
 * default 30), 5 broker unreachable or message refused.
 */
'use strict';

const crypto = require('node:crypto');
const amqp = require('amqplib');

const AMQP_URL = process.env.AMQP_URL || 'amqp://guest:guest@localhost:5672';
const TIMEOUT_MS = Number(process.env.PAYQ_TIMEOUT || 30) * 1000;
const EXCHANGE = 'payq.commands'; // durable topic exchange; routing key = command type
const COMMAND = 'payment.create';
const REPLY_TO = 'amq.rabbitmq.reply-to'; // RabbitMQ's direct reply-to pseudo-queue

function fail(code, message) {
  process.stderr.write(`publish.js: ${message}\n`);
  process.exit(code);
}

function parseBody() {
  if (process.argv.length > 3) fail(2, 'usage: node publish.js [BODY-JSON]');
  if (process.argv.length < 3) {
    return {
      payment_id: `pay-${crypto.randomUUID()}`,
      amount: 1250, // minor units: 12.50 USD
      currency: 'USD',
      source: 'tok_visa', // a card token; a customer account id pays from a wallet
      destination: 'shop', // a merchant account
      capture: true,
      description: 'payq Node.js example',
    };
  }
  try {
    const body = JSON.parse(process.argv[2]);
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new Error('not an object');
    return body;
  } catch (e) {
    return fail(2, `BODY must be a JSON object (${e.message}), e.g. ` +
      '\'{"payment_id":"pay-1","amount":1250,"currency":"USD","source":"tok_visa","destination":"shop","capture":true}\'');
  }
}

async function main() {
  const body = parseBody();
  // The business id is the permanent idempotency key; a message_id derived
  // from it keeps a retry of this same command recognisable as a retry.
  const messageId = `${COMMAND}:${body.payment_id}`;
  const correlationId = crypto.randomUUID();

  let conn;
  try {
    conn = await amqp.connect(AMQP_URL, { clientProperties: { connection_name: 'payq-example-node' } });
  } catch (e) {
    return fail(5, `cannot connect to RabbitMQ (AMQP_URL): ${e.message}`);
  }
  conn.on('error', () => {}); // reported through the channel and the promises below
  let timer;
  try {
    // A confirm channel: the broker acks every publish once it is safely queued.
    const ch = await conn.createConfirmChannel();
    ch.on('error', () => {}); // a channel the broker closes rejects the pending calls
    let returned = false;
    ch.on('return', () => { returned = true; }); // mandatory and no queue took it
    await ch.checkExchange(EXCHANGE).catch(() => {
      throw new Error(`exchange ${EXCHANGE} does not exist: start payq-worker once or import rabbitmq/definitions.json`);
    });

    // Direct reply-to: consume it (no-ack) on the channel we publish on, and
    // before publishing (the broker refuses reply_to amq.rabbitmq.reply-to
    // on a channel that does not consume it).
    let onReply;
    const reply = new Promise((resolve) => {
      onReply = resolve;
      timer = setTimeout(() => resolve(null), TIMEOUT_MS);
    });
    await ch.consume(REPLY_TO, (msg) => {
      if (msg && msg.properties.correlationId === correlationId) onReply(msg);
    }, { noAck: true });

    ch.publish(EXCHANGE, COMMAND, Buffer.from(JSON.stringify(body)), {
      contentType: 'application/json',
      persistent: true, // delivery_mode 2
      messageId,
      correlationId,
      replyTo: REPLY_TO,
      mandatory: true,
    });
    await ch.waitForConfirms(); // rejects if the broker nacked it
    if (returned) return fail(5, `no queue is bound for ${COMMAND} on ${EXCHANGE}: start payq-worker once`);
    process.stderr.write(`publish.js: ${COMMAND} confirmed (message_id ${messageId}, correlation_id ${correlationId})\n`);

    const msg = await reply;
    if (!msg) return fail(4, `no reply within ${TIMEOUT_MS / 1000} s (is payq-worker running?)`);
    const text = msg.content.toString('utf8');
    process.stdout.write(`${text}\n`);
    let status;
    try { status = JSON.parse(text).status; } catch (e) { status = undefined; }
    if (status === 'succeeded' || status === 'authorized') process.exitCode = 0;
    else if (status === 'rejected') process.exitCode = 3;
    else process.exitCode = 1;
  } catch (e) {
    process.exitCode = 5;
    process.stderr.write(`publish.js: ${e.message}\n`);
  } finally {
    clearTimeout(timer);
    await conn.close().catch(() => {});
  }
  return undefined;
}

main();
