package hsmd

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	bridges       prometheus.Gauge
	devices       prometheus.Gauge
	channels      prometheus.Gauge
	frames        *prometheus.CounterVec
	channelFails  prometheus.Counter
	pairings      *prometheus.CounterVec
	requests      *prometheus.CounterVec
	answers       *prometheus.CounterVec
	auditFailures prometheus.Counter
	loginFailures *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		bridges:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "opencustody_hsmd_bridges", Help: "Bridges connected."}),
		devices:  prometheus.NewGauge(prometheus.GaugeOpts{Name: "opencustody_hsmd_devices_attached", Help: "Devices announced by connected bridges."}),
		channels: prometheus.NewGauge(prometheus.GaugeOpts{Name: "opencustody_hsmd_channels_open", Help: "Secure channels established."}),
		frames: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opencustody_hsmd_frames_total", Help: "Device envelopes relayed."},
			[]string{"direction"}),
		channelFails: prometheus.NewCounter(prometheus.CounterOpts{Name: "opencustody_hsmd_channel_failures_total", Help: "Secure channels that failed closed."}),
		pairings: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opencustody_hsmd_pairings_total", Help: "Pairings by result."},
			[]string{"result"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opencustody_hsmd_requests_total", Help: "Requests submitted, and requests closed by outcome."},
			[]string{"event"}),
		answers: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opencustody_hsmd_answers_total", Help: "Device answers to prompts: accepted approvals and rejections, and refused answers."},
			[]string{"result"}),
		auditFailures: prometheus.NewCounter(prometheus.CounterOpts{Name: "opencustody_hsmd_audit_failures_total", Help: "Security events that could not be written to the audit log."}),
		loginFailures: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opencustody_hsmd_login_failures_total", Help: "Calls refused for a missing or wrong token, by API service."},
			[]string{"service"}),
	}
	reg.MustRegister(m.bridges, m.devices, m.channels, m.frames, m.channelFails, m.pairings, m.requests, m.answers, m.auditFailures, m.loginFailures)
	return m
}
