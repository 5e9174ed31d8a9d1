package bridge

import "github.com/prometheus/client_golang/prometheus"

// Directions of relayed frames, as metric labels.
const (
	toDevice = "to_device"
	toHSMD   = "to_hsmd"
)

type metrics struct {
	connected      prometheus.Gauge
	connections    prometheus.Counter
	connectFails   prometheus.Counter
	devices        prometheus.Gauge
	detaches       *prometheus.CounterVec
	frames         *prometheus.CounterVec
	frameBytes     *prometheus.CounterVec
	framesDropped  *prometheus.CounterVec
	deviceOpenFail prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{Name: "opencustody_bridge_hsmd_connected",
			Help: "1 while the relay stream to hsmd is up."}),
		connections: prometheus.NewCounter(prometheus.CounterOpts{Name: "opencustody_bridge_hsmd_connections_total",
			Help: "Relay streams to hsmd established."}),
		connectFails: prometheus.NewCounter(prometheus.CounterOpts{Name: "opencustody_bridge_hsmd_connect_failures_total",
			Help: "Attempts to reach hsmd that failed, and relay streams that broke."}),
		devices: prometheus.NewGauge(prometheus.GaugeOpts{Name: "opencustody_bridge_devices_open",
			Help: "Devices open and relayed."}),
		detaches: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opencustody_bridge_device_detaches_total",
			Help: "Devices detached, by reason."}, []string{"reason"}),
		frames: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opencustody_bridge_frames_total",
			Help: "Envelopes relayed, by direction."}, []string{"direction"}),
		frameBytes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opencustody_bridge_frame_bytes_total",
			Help: "Bytes of envelopes relayed, by direction."}, []string{"direction"}),
		framesDropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "opencustody_bridge_frames_dropped_total",
			Help: "Envelopes not relayed, by reason."}, []string{"reason"}),
		deviceOpenFail: prometheus.NewCounter(prometheus.CounterOpts{Name: "opencustody_bridge_device_open_failures_total",
			Help: "Devices found that could not be opened."}),
	}
	reg.MustRegister(m.connected, m.connections, m.connectFails, m.devices, m.detaches,
		m.frames, m.frameBytes, m.framesDropped, m.deviceOpenFail)
	return m
}
